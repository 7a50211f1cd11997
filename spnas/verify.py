"""Parity of artifacts against the PyTorch reference, gated per precision.

Written once over the ``Runner`` interface and shared by ``spnas-export`` (which fills the
report's ``parity`` blocks) and ``spnas-verify`` (the CI gate), so both give the same
figures for the same artifact and images.  Called, this module is the Python API's
``spnas.verify(paths, ...)`` (``spnas.api.verify``; see ``spnas.export`` for why a module).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import types
from pathlib import Path

import numpy as np

from spnas.console import format_table, markdown_table
from spnas.parity import DEFAULT_THRESHOLDS, Thresholds, compare, to_json_number

RANDOM_NOT_APPLICABLE = "not applicable (random weights)"
# Floor of the logit SQNR between two int8 artifacts of one plan; benchmarks/quant_plan.py measures the pairs.
MIN_INT8_AGREEMENT_DB = 38.0


def thresholds_for(precision: str, overrides) -> Thresholds:
    """The precision's default gate with the CLI's ``--min-top1`` / ``--min-sqnr-db`` / ``--max-rel-error``
    (attributes of ``overrides``; ``None`` keeps the default), shared by ``spnas-export`` and ``spnas-verify``."""
    names = ("min_top1", "min_sqnr_db", "max_rel_error")
    values = {name: getattr(overrides, name, None) for name in names}
    return dataclasses.replace(DEFAULT_THRESHOLDS[precision], **{k: v for k, v in values.items() if v is not None})


def evaluate(runner, pixels: np.ndarray, reference_logits: np.ndarray, *, thresholds: Thresholds | None = None,
             random_weights: bool = False) -> dict:
    """Run one artifact on the parity images and gate it; returns the report's artifact fields."""
    return gate_logits(runner.run(pixels), reference_logits, runner.precision, thresholds=thresholds,
                       random_weights=random_weights)


def gate_logits(logits: np.ndarray, reference_logits: np.ndarray, precision: str, *,
                thresholds: Thresholds | None = None, random_weights: bool = False) -> dict:
    """``evaluate`` for logits already computed (kept for another check, or simulated)."""
    metrics = compare(reference_logits, logits)
    gate = thresholds or DEFAULT_THRESHOLDS[precision]
    failures = gate.failures(metrics)
    if random_weights and precision == "int8":
        status, passed = RANDOM_NOT_APPLICABLE, None
    else:
        status, passed = ("passed" if not failures else "failed"), not failures
    return {
        "parity": {key: to_json_number(value) for key, value in metrics.items()},
        "gate": {"status": status, "thresholds": {k: v for k, v in vars(gate).items() if v is not None},
                 "failures": failures},
        "passed": passed,
    }


def lowers_plan(entry: dict) -> bool:
    """An int8 artifact that lowers the export's quant plan (not an app variant, not a format's own quantizer)."""
    quantization = (entry.get("details") or {}).get("quantization") or {}
    return entry["precision"] == "int8" and "plan" in quantization and not entry.get("app")


def int8_agreement(logits: dict[str, np.ndarray], min_sqnr_db: float | None = None) -> dict | None:
    """Cross-format consistency: logit SQNR and top-1 agreement of every pair of int8 artifacts of one plan.

    All of them lower the same plan, so they compute nearly the same function and must agree with
    each other far more closely than each agrees with float; a pair below ``min_sqnr_db`` means one
    format's lowering drifted from the plan.  None with fewer than two artifacts.
    """
    floor = MIN_INT8_AGREEMENT_DB if min_sqnr_db is None else min_sqnr_db
    pairs = []
    for first, second in itertools.combinations(sorted(logits), 2):
        metrics = compare(logits[first], logits[second])
        sqnr = metrics["sqnr_db"]
        pairs.append({"artifacts": [first, second], "sqnr_db": to_json_number(sqnr),
                      "top1_agreement": metrics["top1_agreement"], "passed": bool(sqnr >= floor)})
    if not pairs:
        return None
    return {"min_sqnr_db": floor, "pairs": pairs, "passed": all(pair["passed"] for pair in pairs)}


def agreement_table(agreement: dict) -> str:
    rows = [[Path(a).name, Path(b).name, "inf" if isinstance(pair["sqnr_db"], str) else f"{pair['sqnr_db']:.1f}",
             f"{pair['top1_agreement']:.3f}", "PASSED" if pair["passed"] else "FAILED"]
            for pair in agreement["pairs"] for a, b in [pair["artifacts"]]]
    return (f"\nint8 artifacts against each other (one quant plan; floor {agreement['min_sqnr_db']:g} dB):\n"
            + format_table(["artifact", "artifact", "SQNR dB", "top1", "gate"], rows))


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
    if report.int8_agreement is not None:
        print(agreement_table(report.int8_agreement))
    if any(entry.get("accelerators") for entry in entries):
        from spnas.accelerators import verdict_table

        print(verdict_table(entries))
    return entries


def summary_markdown(entries: list[dict]) -> str:
    return markdown_table(TABLE_HEADERS, table_rows(entries))


class _CallableModule(types.ModuleType):
    """``spnas.verify(paths, ...)``: this module, called, is ``spnas.api.verify``."""

    def __call__(self, *args, **kwargs):
        from spnas.api import verify

        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
