"""Parity of artifacts against the PyTorch reference, gated per precision.

Written once over the ``Runner`` interface and shared by ``spnas-export`` (which fills the
report's ``parity`` blocks) and ``spnas-verify`` (the CI gate), so both give the same
figures for the same artifact and images.  Called, this module is the Python API's
``spnas.verify(paths, ...)`` (``spnas.api.verify``; see ``spnas.export`` for why a module).
"""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np

from spnas.console import format_table, markdown_table
from spnas.parity import DEFAULT_THRESHOLDS, Thresholds, compare, to_json_number

RANDOM_NOT_APPLICABLE = "not applicable (random weights)"


def thresholds_for(precision: str, overrides) -> Thresholds:
    """The precision's default gate with the CLI's ``--min-top1`` / ``--min-sqnr-db`` / ``--max-rel-error``
    (attributes of ``overrides``; ``None`` keeps the default), shared by ``spnas-export`` and ``spnas-verify``."""
    names = ("min_top1", "min_sqnr_db", "max_rel_error")
    values = {name: getattr(overrides, name, None) for name in names}
    return dataclasses.replace(DEFAULT_THRESHOLDS[precision], **{k: v for k, v in values.items() if v is not None})


def evaluate(runner, pixels: np.ndarray, reference_logits: np.ndarray, *, thresholds: Thresholds | None = None,
             random_weights: bool = False) -> dict:
    """Run one artifact on the parity images and gate it; returns the report's artifact fields."""
    metrics = compare(reference_logits, runner.run(pixels))
    gate = thresholds or DEFAULT_THRESHOLDS[runner.precision]
    failures = gate.failures(metrics)
    if random_weights and runner.precision == "int8":
        status, passed = RANDOM_NOT_APPLICABLE, None
    else:
        status, passed = ("passed" if not failures else "failed"), not failures
    return {
        "parity": {key: to_json_number(value) for key, value in metrics.items()},
        "gate": {"status": status, "thresholds": {k: v for k, v in vars(gate).items() if v is not None},
                 "failures": failures},
        "passed": passed,
    }


class RecordedOutputs:
    """Logits computed elsewhere (on a phone), gated by ``evaluate`` exactly as a runner's own."""

    def __init__(self, runner, logits: np.ndarray):
        self.format, self.precision, self.logits = runner.format, runner.precision, logits

    def run(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) != len(self.logits):
            raise ValueError(f"{len(self.logits)} recorded outputs for {len(pixels)} images")
        return self.logits


TABLE_HEADERS = ["artifact", "format", "precision", "n", "top1", "top5", "SQNR dB", "cosine", "max err", "rel err",
                 "size MB", "gate"]


def table_rows(entries: list[dict]) -> list[list[str]]:
    rows = []
    for entry in entries:
        parity = entry["parity"]
        sqnr = parity["sqnr_db"]
        rows.append([
            Path(entry["path"]).name, entry["format"], entry["precision"], str(parity["n_images"]),
            f"{parity['top1_agreement']:.3f}", f"{parity['top5_agreement']:.3f}",
            sqnr if isinstance(sqnr, str) else f"{sqnr:.1f}", f"{parity['cosine']:.5f}",
            f"{parity['max_abs_error']:.2e}", f"{parity['max_rel_error']:.1e}",
            f"{entry['size_bytes'] / 1e6:.2f}", entry["gate"]["status"].upper() if entry["passed"] is not None
            else entry["gate"]["status"],
        ])
    return rows


def summary_table(entries: list[dict]) -> str:
    return format_table(TABLE_HEADERS, table_rows(entries))


def print_results(report) -> list[dict]:
    """The parity table of a ``spnas.report.Report``, and with ``--val`` its accuracy table; returns the entries."""
    entries = [artifact.to_dict() for artifact in report.artifacts]
    print(summary_table(entries))
    if report.validation is not None:
        from spnas.validation import accuracy_table

        print(accuracy_table(report.validation, entries))
    return entries


def summary_markdown(entries: list[dict]) -> str:
    return markdown_table(TABLE_HEADERS, table_rows(entries))


class _CallableModule(types.ModuleType):
    """``spnas.verify(paths, ...)``: this module, called, is ``spnas.api.verify``."""

    def __call__(self, *args, **kwargs):
        from spnas.api import verify

        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
