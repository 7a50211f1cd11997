"""Will an artifact stay on the phone's accelerators?  The official static checkers, per format.

One entry per delegate or execution provider that can take the format, in one schema::

    {"checker": "name version", "ops_total": int, "ops_supported": int, "partitions": int,
     "unsupported": [{"op", "reason"}], "verdict": VERDICT, "messages": [the checker's own words]}

- ``.tflite``: LiteRT's GPU delegate (``spnas.accelerators.litert_gpu``: TF's model analyzer);
- ``.onnx``: ORT's NNAPI and Core ML execution providers (``spnas.accelerators.ort_mobile``: ORT's
  mobile usability checker);
- ``.pte``: the XNNPACK delegate of the program and the other ExecuTorch partitioners that run on
  Linux (``spnas.accelerators.executorch_partitioners``).

A static check reads the graph against the accelerator's op list; it proves an op would be
refused, not that an accepted one runs fast or exactly on a device (AI Hub's ``--compute-unit``
runs are that check).  Each checker module imports its runtime lazily.
"""

from __future__ import annotations

from pathlib import Path

ACCELERATED_FORMATS = ("tflite", "onnx", "executorch")  # the formats whose report entries carry ``accelerators``


def check(path: str | Path, fmt: str) -> dict | None:
    """``{accelerator: entry}`` of one artifact file, from the checkers that read the file itself
    (None for a format without one here: CoreML packages; ``.pte`` entries come from the export)."""
    if fmt == "tflite":
        from spnas.accelerators.litert_gpu import check_gpu

        return {"litert_gpu": check_gpu(path)}
    if fmt == "onnx":
        from spnas.accelerators.ort_mobile import check_ort_mobile

        return check_ort_mobile(path)
    return None
