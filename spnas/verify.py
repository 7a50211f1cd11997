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
# The int8 gates of an artifact that lowers the export's quant plan, relative to the same images' int8-vs-float
# SQNR so that they fit any head (a few-class head cannot average the body's noise away as a 1000-way head
# does: the same plan measures 40 dB at the fixture's logits and 26 dB at a 4-class fine-tune's).
# benchmarks/gate_rule.py measures them on four models and the four faults of spnas.faults.
SIMULATION_MARGIN_DB = 0.0  # artifact vs the plan's simulation >= simulation vs float + this
AGREEMENT_MARGIN_DB = 0.0  # two artifacts of one plan >= the better one's SQNR vs float + this
MAX_BELOW_SIMULATION_DB = 3.0  # artifact vs float >= simulation vs float - this (it is as good as its plan)
MIN_POOLED_SQNR_DB = 16.0  # the plan's simulation at the pooled features, which every head reads: correct plans
# measure 23.9 dB (32 calibration images) to 33.6 dB, the faults' logits 7-15 dB on the 1000-way head, which
# reads ~6-8 dB better than the pooled features
RULE = {"simulation_margin_db": SIMULATION_MARGIN_DB, "agreement_margin_db": AGREEMENT_MARGIN_DB,
        "max_below_simulation_db": MAX_BELOW_SIMULATION_DB, "min_pooled_sqnr_db": MIN_POOLED_SQNR_DB}


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


def plan_thresholds(overrides) -> Thresholds:
    """The int8 gate of the plan's simulation: top-1 (``--min-top1``), and a logit SQNR floor only when
    ``--min-sqnr-db`` sets one; the plan's own SQNR floor is at the pooled features (``plan_failures``)."""
    return dataclasses.replace(thresholds_for("int8", overrides), min_sqnr_db=getattr(overrides, "min_sqnr_db", None))


def lowering_thresholds(simulation: dict, overrides) -> Thresholds:
    """An artifact that lowers the plan: against float, at most ``MAX_BELOW_SIMULATION_DB`` under the plan's
    simulated logit SQNR on the same images (``--min-sqnr-db`` sets a fixed floor instead)."""
    gate = thresholds_for("int8", overrides)
    if getattr(overrides, "min_sqnr_db", None) is None:
        gate = dataclasses.replace(gate, min_sqnr_db=round(simulation["logit_sqnr_db"] - MAX_BELOW_SIMULATION_DB, 2))
    return gate


def plan_failures(simulation: dict, overrides=None) -> list[str]:
    """What is wrong with the plan itself: its simulation's pooled-feature SQNR under the floor
    (``--min-pooled-sqnr-db``, default ``MIN_POOLED_SQNR_DB``)."""
    floor = _override(overrides, "min_pooled_sqnr_db", MIN_POOLED_SQNR_DB)
    pooled = simulation["pooled_sqnr_db"]
    return [] if pooled >= floor else [f"plan: simulated pooled-feature SQNR {pooled:.1f} dB < {floor:g} dB"]


def simulation_parity(logits: np.ndarray, simulated: np.ndarray, simulation: dict, overrides=None) -> dict:
    """An artifact against the plan's simulation: it must agree with it better than the simulation agrees
    with float (``--simulation-margin-db``, default ``SIMULATION_MARGIN_DB``), or it does not compute the plan."""
    metrics = compare(simulated, logits)
    floor = round(simulation["logit_sqnr_db"] + _override(overrides, "simulation_margin_db", SIMULATION_MARGIN_DB), 2)
    passed = bool(metrics["sqnr_db"] >= floor)
    return {"sqnr_db": to_json_number(metrics["sqnr_db"]), "top1_agreement": metrics["top1_agreement"],
            "min_sqnr_db": floor, "passed": passed,
            "failures": [] if passed else [f"vs simulation: SQNR {metrics['sqnr_db']:.1f} dB < {floor:g} dB"]}


def gate_lowering(logits: np.ndarray, reference_logits: np.ndarray, simulation: dict, simulated: np.ndarray,
                  overrides=None, random_weights: bool = False) -> dict:
    """``gate_logits`` for an artifact that lowers the plan: the relative floor against float, the gate against
    the plan's simulation (``vs_simulation``) and the plan's own pooled-feature floor, as one verdict."""
    result = gate_logits(logits, reference_logits, "int8", thresholds=lowering_thresholds(simulation, overrides),
                         random_weights=random_weights)
    vs_simulation = simulation_parity(logits, simulated, simulation, overrides)
    failures = vs_simulation.pop("failures") + plan_failures(simulation, overrides)
    result["vs_simulation"] = vs_simulation
    result["gate"]["thresholds"].update({"min_sqnr_db_vs_simulation": vs_simulation["min_sqnr_db"],
                                         "min_pooled_sqnr_db": _override(overrides, "min_pooled_sqnr_db",
                                                                         MIN_POOLED_SQNR_DB)})
    if failures and not random_weights:
        result["gate"]["failures"] += failures
        result["gate"]["status"], result["passed"] = "failed", False
    return result


def _override(overrides, name: str, default: float) -> float:
    value = getattr(overrides, name, None)
    return default if value is None else value


def int8_agreement(logits: dict[str, np.ndarray], reference_logits: np.ndarray, min_sqnr_db: float | None = None,
                   margin_db: float | None = None) -> dict | None:
    """Cross-format consistency: logit SQNR and top-1 agreement of every pair of int8 artifacts of one plan.

    All of them lower the same plan, so they compute nearly the same function and must agree with
    each other better than either agrees with float: a pair passes at the better of its two SQNRs
    against float plus ``margin_db`` (``AGREEMENT_MARGIN_DB``), or at the fixed ``min_sqnr_db`` when
    one is given.  A pair below means one format's lowering drifted from the plan.  None with fewer
    than two artifacts.
    """
    margin = AGREEMENT_MARGIN_DB if margin_db is None else margin_db
    vs_float = {name: compare(reference_logits, value)["sqnr_db"] for name, value in logits.items()}
    pairs = []
    for first, second in itertools.combinations(sorted(logits), 2):
        metrics = compare(logits[first], logits[second])
        floor = min_sqnr_db if min_sqnr_db is not None else round(max(vs_float[first], vs_float[second]) + margin, 2)
        pairs.append({"artifacts": [first, second], "sqnr_db": to_json_number(metrics["sqnr_db"]),
                      "top1_agreement": metrics["top1_agreement"], "min_sqnr_db": floor,
                      "passed": bool(metrics["sqnr_db"] >= floor)})
    if not pairs:
        return None
    rule = ({"min_sqnr_db": min_sqnr_db} if min_sqnr_db is not None
            else {"margin_db_over_sqnr_vs_float": margin})
    return {**rule, "pairs": pairs, "passed": all(pair["passed"] for pair in pairs)}


def plan_gate(simulation: dict, vs_float: dict[str, dict], vs_simulation: dict[str, dict],
              pairs: dict[tuple[str, str], float]) -> dict[str, list[str]]:
    """The default rule on measurements already made (``benchmarks/gate_rule.py``): failures of the plan, of
    each artifact (``{name: compare(...) metrics}`` against float and against the simulation) and of the pairs."""
    gate = lowering_thresholds(simulation, None)
    floor = simulation["logit_sqnr_db"] + SIMULATION_MARGIN_DB
    failures = {"plan": plan_failures(simulation)}
    for name, metrics in vs_float.items():
        failures[name] = gate.failures(metrics) + ([f"vs simulation: SQNR {vs_simulation[name]['sqnr_db']:.1f} dB"]
                                                   if vs_simulation[name]["sqnr_db"] < floor else [])
    failures["pairs"] = [f"{a}-{b}: {sqnr:.1f} dB" for (a, b), sqnr in pairs.items()
                         if sqnr < max(vs_float[a]["sqnr_db"], vs_float[b]["sqnr_db"]) + AGREEMENT_MARGIN_DB]
    return failures


def simulate_plan(model, plan, pixels: np.ndarray, spec, overrides=None, plan_file: str = "quant_plan.json"):
    """``(report's int8_plan block, simulated logits)``: the plan's simulation on the parity images against the
    float net, at the pooled features and the logits, with the plan's own gate."""
    from spnas.folding import fold_batchnorm
    from spnas.preprocess import normalize
    from spnas.quantize.drift import body_sqnr

    simulation, simulated = body_sqnr(fold_batchnorm(model), plan, normalize(pixels, spec))
    simulation = {key: to_json_number(value) for key, value in simulation.items()}
    failures = plan_failures(simulation, overrides)
    return ({"file": plan_file, "n_images": len(pixels), "simulation": simulation,
             "min_pooled_sqnr_db": _override(overrides, "min_pooled_sqnr_db", MIN_POOLED_SQNR_DB),
             "passed": not failures, "failures": failures}, simulated)


def plan_table(plan: dict, entries: list[dict]) -> str:
    """The plan's simulation against float (pooled features and logits) and each lowering against it."""
    simulation = plan["simulation"]
    lines = [f"\nint8 plan ({plan['file']}), simulated on {plan['n_images']} images: pooled features "
             f"{simulation['pooled_sqnr_db']:.1f} dB (floor {plan['min_pooled_sqnr_db']:g}), logits "
             f"{simulation['logit_sqnr_db']:.1f} dB, top-1 {simulation['top1_agreement']:.3f}"]
    rows = [[Path(entry["path"]).name, _db(entry["vs_simulation"]["sqnr_db"]),
             f"{entry['vs_simulation']['top1_agreement']:.3f}", f"{entry['vs_simulation']['min_sqnr_db']:g}",
             "PASSED" if entry["vs_simulation"]["passed"] else "FAILED"]
            for entry in entries if "vs_simulation" in entry]
    if rows:
        lines.append(format_table(["artifact", "SQNR dB vs simulation", "top1", "floor dB", "gate"], rows))
    return "\n".join(lines)


def _db(value) -> str:
    return "inf" if isinstance(value, str) else f"{value:.1f}"


def agreement_table(agreement: dict) -> str:
    rows = [[Path(a).name, Path(b).name, _db(pair["sqnr_db"]), f"{pair['top1_agreement']:.3f}",
             f"{pair['min_sqnr_db']:g}", "PASSED" if pair["passed"] else "FAILED"]
            for pair in agreement["pairs"] for a, b in [pair["artifacts"]]]
    rule = (f"fixed floor {agreement['min_sqnr_db']:g} dB" if "min_sqnr_db" in agreement
            else f"floor: the pair's better SQNR vs float + {agreement['margin_db_over_sqnr_vs_float']:g} dB")
    return (f"\nint8 artifacts against each other (one quant plan; {rule}):\n"
            + format_table(["artifact", "artifact", "SQNR dB", "top1", "floor dB", "gate"], rows))


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
    if report.int8_plan is not None:
        print(plan_table(report.int8_plan, entries))
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
