"""The Python API: ``spnas.load(weights)`` gives a ``Model`` that exports and verifies, as Ultralytics' does.

::

    model = spnas.load("my-finetune/")                       # resolved now: a bad path fails here
    report = model.export("tflite", int8=True, calib="photos/")
    checked = model.verify("exports/spnasnet_100_int8.tflite")
    checked = spnas.verify("exports/spnasnet_100_int8.tflite")   # weights from the report.json beside it

Keywords are the CLI flags with ``_`` for ``-``; both calls build the same typed request as the CLIs
(``spnas.pipeline``) and return the ``spnas.report.Report`` whose ``to_json()`` is the CLI's file.
Bad input raises ``SpnasError`` with the CLI's one-line message; a failed gate is ``report.passed ==
False``.  Progress goes to stderr unless ``quiet=True``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from spnas.errors import SpnasError
from spnas.report import Report

SOURCE_KEYWORDS = ("weights", "labels", "input_size", "crop_pct", "interpolation", "mean", "std")


class Model:
    """A checkpoint with its preprocessing and class names, resolved once (``spnas.load``)."""

    def __init__(self, weights: str | Path = "auto", *, labels: str | Path | None = None, **preprocessing):
        from spnas.pipeline import ExportRequest
        from spnas.pipeline.export import load_source

        self._source_keywords = {"weights": str(weights), "labels": str(labels) if labels else None, **preprocessing}
        probe = ExportRequest.from_keywords(**self._source_keywords)  # unknown keywords fail here, in one line
        self.source = load_source(probe.weights, probe.labels, probe.preprocessing_overrides())

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def preprocessing(self):
        """The ``spnas.preprocess.PreprocessSpec`` every artifact of this model is exported with."""
        return self.source.spec

    def export(self, format: str = "tflite", **options) -> Report:
        """``spnas-export --format FORMAT`` on this model; ``options``: its other flags (``int8=True``, ``calib=``,
        ``out=``, ``onnx_int8="u8s8"``, ...).  Writes ``out`` (default ``exports/``) and returns the report."""
        from spnas.pipeline import ExportRequest, run_export

        if given := sorted(set(options) & set(SOURCE_KEYWORDS)):
            raise SpnasError(f"{', '.join(given)}: give them to spnas.load(), which resolves the model once")
        request = ExportRequest.from_keywords(format=format, **self._source_keywords, **options)
        return run_export(request, source=self.source)

    def verify(self, artifacts, **options) -> Report:
        """``spnas-verify ARTIFACT... --weights`` this model's weights; ``options``: its other flags."""
        return verify(artifacts, weights=self._source_keywords["weights"], **options)

    def __repr__(self) -> str:
        return f"spnas.Model({self._source_keywords['weights']!r}, {self.num_classes} classes)"


def load(weights: str | Path = "auto", *, labels: str | Path | None = None, **preprocessing) -> Model:
    """``spnasnet_100`` weights as timm gives them: "auto", "random", "hf-hub:ORG/REPO", a timm folder or a state
    dict file; ``labels`` and the preprocessing overrides (``input_size``, ``crop_pct``, ``interpolation``,
    ``mean``, ``std``) as spnas-export's flags."""
    return Model(weights, labels=labels, **preprocessing)


def verify(artifacts, **options) -> Report:
    """``spnas-verify``: gate ``artifacts`` (one path or several) against their reference; ``options``: its flags."""
    from spnas.pipeline import VerifyRequest, run_verify

    return run_verify(VerifyRequest.from_keywords(artifacts, **options))


def export(format: str = "tflite", **options) -> Report:
    """Deprecated (one release): ``spnas.load(weights).export(format, ...)``."""
    from spnas.pipeline import ExportRequest, run_export

    warnings.warn("spnas.api.export is deprecated: use spnas.load(weights).export(format, ...)", DeprecationWarning,
                  stacklevel=2)
    return run_export(ExportRequest.from_keywords(format=format, **options))
