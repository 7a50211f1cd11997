"""spnas: SPNasNet to ONNX, TFLite, CoreML and ExecuTorch, float and int8, with parity and latency proof.

::

    import spnas

    model = spnas.load("my-finetune/")                   # timm weights: a folder, a file or hf-hub:ORG/REPO
    report = model.export("tflite", int8=True)           # spnas-export's run; returns spnas.report.Report
    checked = spnas.verify("exports/spnasnet_100_int8.tflite")   # spnas-verify's

The typed layer under these is ``spnas.pipeline`` (``ExportRequest``, ``VerifyRequest``).  Names are
imported on first use, so ``import spnas`` stays light.
"""

from __future__ import annotations

from spnas.version import __version__

__all__ = ["Model", "__version__", "create_model", "load", "verify"]
_HOMES = {"Model": "spnas.api", "load": "spnas.api", "verify": "spnas.api", "create_model": "spnas.create"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'spnas' has no attribute {name!r}")
