"""The Python API: ``spnas.export(...)`` and ``spnas.verify(...)``, the same runs as the CLIs.

Each keyword is the CLI flag with ``_`` for ``-`` (``num_calib=16`` is ``--num-calib 16``,
``max_accuracy_drop=1.0`` is ``--max-accuracy-drop 1``); flags that take no value take
``True``.  Both return the typed ``spnas.report.Report`` whose ``to_json()`` is the text the
CLI writes; bad input raises ``SpnasError`` with the CLI's one-line message.  Progress lines go
to stderr unless ``quiet=True``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spnas.errors import SpnasError
from spnas.report import Report


def _namespace(parser: argparse.ArgumentParser, required: list[str], options: dict) -> argparse.Namespace:
    """The CLI's parsed arguments for ``required`` argv plus keyword ``options`` (checked against the flags)."""
    args = parser.parse_args(required)
    for key, value in options.items():
        if not hasattr(args, key) or key in ("debug", "version"):
            raise SpnasError(f"unknown option {key!r}: use the {parser.prog} flags with _ for -, e.g. num_calib")
        setattr(args, key, str(value) if isinstance(value, Path) else value)
    return args


def export(format: str = "tflite", *, int8: bool = False, weights: str | Path = "auto", calib: str | Path | None = None,
           val: str | Path | None = None, out: str | Path = "exports", **options) -> Report:
    """``spnas-export``: write the artifacts and ``report.json`` into ``out`` and return the report.

    ``format``: onnx, tflite, coreml, executorch or all.  A failed parity or accuracy gate does not
    raise: the report's ``passed`` is False (``exit_code`` 1), as the CLI exits 1.
    """
    from spnas.cli.export import build_parser, run_export, usage_problem

    parser = build_parser()
    if format not in ("onnx", "tflite", "coreml", "executorch", "all"):
        raise SpnasError(f"unknown format {format!r}; choose from onnx, tflite, coreml, executorch, all")
    args = _namespace(parser, ["--format", format],
                      {"int8": int8, "weights": weights, "calib": calib, "val": val, "out": out, **options})
    if problem := usage_problem(args):
        raise SpnasError(problem)
    report = run_export(args)
    if report is None:
        raise SpnasError("strict: refusing random weights")
    return report


def verify(paths, **options) -> Report:
    """``spnas-verify``: gate ``paths`` (one artifact or several) against the reference and return the report."""
    from spnas.cli import ai_hub_misuse
    from spnas.cli.verify import build_parser, run_verify

    paths = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
    if not paths:
        raise SpnasError("verify: give at least one artifact")
    args = _namespace(build_parser(), paths, options)
    if misused := ai_hub_misuse(args):
        raise SpnasError(f"{misused} goes with --ai-hub")
    report = run_verify(args)
    if report is None:
        raise SpnasError("strict: the reference weights are random; parity against them proves nothing")
    return report
