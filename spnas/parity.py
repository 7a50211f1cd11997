"""Parity metrics between an artifact's logits and the PyTorch reference, and the gate.

Written once over the ``Runner`` interface: every format is compared the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - cand)^2); infinite for an exact match."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = float(((np.asarray(candidate, dtype=np.float64) - reference) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10(max(float((reference**2).sum()), 1e-30) / noise))


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Metrics of candidate logits (N, C) against reference logits (N, C).

    - ``max_abs_error``: largest absolute logit difference;
    - ``max_rel_error``: that, divided by the reference logit range (max - min) over the set;
    - ``cosine``: mean per-image cosine similarity of the logit vectors;
    - ``sqnr_db``: 10 log10(sum ref^2 / sum (ref - cand)^2) over all logits;
    - ``top1_agreement``: share of images whose top-1 class equals the reference's;
    - ``top5_agreement``: share of images whose reference top-1 class is in the candidate's top-5.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    error = candidate - reference
    max_abs = float(np.abs(error).max())
    logit_range = float(reference.max() - reference.min()) or 1.0
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = float(np.mean((reference * candidate).sum(axis=1) / np.maximum(norms, 1e-30)))
    ref_top1 = reference.argmax(axis=1)
    cand_top5 = np.argsort(-candidate, axis=1)[:, :5]
    return {
        "n_images": int(reference.shape[0]),
        "max_abs_error": max_abs,
        "max_rel_error": max_abs / logit_range,
        "cosine": cosine,
        "sqnr_db": sqnr_db(reference, candidate),
        "top1_agreement": float(np.mean(candidate.argmax(axis=1) == ref_top1)),
        "top5_agreement": float(np.mean((cand_top5 == ref_top1[:, None]).any(axis=1))),
    }


@dataclass(frozen=True)
class Thresholds:
    """A gate: ``None`` means the metric is not checked for this precision."""

    max_rel_error: float | None = None
    min_sqnr_db: float | None = None
    min_top1: float | None = None

    def failures(self, metrics: dict) -> list[str]:
        failed = []
        if self.max_rel_error is not None and not metrics["max_rel_error"] <= self.max_rel_error:
            failed.append(f"relative error {metrics['max_rel_error']:.2e} > {self.max_rel_error:.0e}")
        if self.min_sqnr_db is not None and not metrics["sqnr_db"] >= self.min_sqnr_db:
            failed.append(f"SQNR {metrics['sqnr_db']:.1f} dB < {self.min_sqnr_db:g} dB")
        if self.min_top1 is not None and not metrics["top1_agreement"] >= self.min_top1:
            failed.append(f"top-1 agreement {metrics['top1_agreement']:.3f} < {self.min_top1:g}")
        return failed


# Defaults per precision, set from benchmarks/gate_thresholds.py on the fixture weights (docs/parity.md,
# "Parity thresholds"): correct exports measure fp32 <= 1e-6, fp16 >= 67 dB, int8 >= 30.5 dB and
# top-1 >= 0.98; every deliberate fault measures <= 14.8 dB and top-1 <= 0.58.
DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(max_rel_error=1e-5),
    "fp16": Thresholds(min_sqnr_db=40.0),
    "int8": Thresholds(min_sqnr_db=22.0, min_top1=0.85),
}


def to_json_number(value: float) -> float | str:
    """JSON has no infinity: an exact match (infinite SQNR) is written as the string "inf"."""
    return "inf" if value == float("inf") else value
