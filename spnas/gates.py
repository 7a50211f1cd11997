"""Parity of artifacts against the PyTorch reference, gated per precision.

Written once over the ``Runner`` interface and shared by the export and the verification
(``spnas.pipeline``), so both give the same figures for the same artifact and images.
``GateOverrides`` carries the user's threshold flags; ``None`` everywhere keeps the defaults.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class GateOverrides:
    """The threshold flags of ``spnas-export`` and ``spnas-verify``; ``None`` keeps a gate's default."""

    min_top1: float | None = None
    min_sqnr_db: float | None = None
    max_rel_error: float | None = None
    min_pooled_sqnr_db: float | None = None
    simulation_margin_db: float | None = None
    int8_agreement_margin_db: float | None = None
    min_int8_agreement_db: float | None = None


NO_OVERRIDES = GateOverrides()


def thresholds_for(precision: str, overrides: GateOverrides = NO_OVERRIDES) -> Thresholds:
    """The precision's default gate with ``--min-top1`` / ``--min-sqnr-db`` / ``--max-rel-error`` applied."""
    values = {name: getattr(overrides, name) for name in ("min_top1", "min_sqnr_db", "max_rel_error")}
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


def plan_thresholds(overrides: GateOverrides = NO_OVERRIDES) -> Thresholds:
    """The int8 gate of the plan's simulation: top-1 (``--min-top1``), and a logit SQNR floor only when
    ``--min-sqnr-db`` sets one; the plan's own SQNR floor is at the pooled features (``plan_failures``)."""
    return dataclasses.replace(thresholds_for("int8", overrides), min_sqnr_db=overrides.min_sqnr_db)


def lowering_thresholds(simulation: dict, overrides: GateOverrides = NO_OVERRIDES) -> Thresholds:
    """An artifact that lowers the plan: against float, at most ``MAX_BELOW_SIMULATION_DB`` under the plan's
    simulated logit SQNR on the same images (``--min-sqnr-db`` sets a fixed floor instead)."""
    gate = thresholds_for("int8", overrides)
    if overrides.min_sqnr_db is None:
        gate = dataclasses.replace(gate, min_sqnr_db=round(simulation["logit_sqnr_db"] - MAX_BELOW_SIMULATION_DB, 2))
    return gate


def plan_failures(simulation: dict, overrides: GateOverrides = NO_OVERRIDES) -> list[str]:
    """What is wrong with the plan itself: its simulation's pooled-feature SQNR under the floor
    (``--min-pooled-sqnr-db``, default ``MIN_POOLED_SQNR_DB``)."""
    floor = _override(overrides, "min_pooled_sqnr_db", MIN_POOLED_SQNR_DB)
    pooled = simulation["pooled_sqnr_db"]
    return [] if pooled >= floor else [f"plan: simulated pooled-feature SQNR {pooled:.1f} dB < {floor:g} dB"]


def plan_judge(overrides: GateOverrides = NO_OVERRIDES) -> Callable[[dict], list[str]]:
    """The plan's whole gate as one function of its simulation (``spnas.quantize.drift.body_sqnr``): top-1, the
    logit floor when ``--min-sqnr-db`` sets one, and the pooled-feature floor.  ``--fallback auto`` re-plans until
    it returns no failure."""
    thresholds = plan_thresholds(overrides)

    def failures(simulation: dict) -> list[str]:
        return (thresholds.failures({"sqnr_db": simulation["logit_sqnr_db"], **simulation})
                + plan_failures(simulation, overrides))

    return failures


def simulation_floor(simulation: dict, overrides: GateOverrides = NO_OVERRIDES) -> float:
    """An artifact must agree with the plan's simulation better than the simulation agrees with float
    (``--simulation-margin-db``, default ``SIMULATION_MARGIN_DB``), or it does not compute the plan."""
    margin = _override(overrides, "simulation_margin_db", SIMULATION_MARGIN_DB)
    return round(simulation["logit_sqnr_db"] + margin, 2)


def simulation_parity(logits: np.ndarray, simulated: np.ndarray, simulation: dict,
                      overrides: GateOverrides = NO_OVERRIDES) -> dict:
    """An artifact against the plan's simulation, gated at ``simulation_floor``."""
    metrics = compare(simulated, logits)
    floor = simulation_floor(simulation, overrides)
    passed = bool(metrics["sqnr_db"] >= floor)
    return {"sqnr_db": to_json_number(metrics["sqnr_db"]), "top1_agreement": metrics["top1_agreement"],
            "min_sqnr_db": floor, "passed": passed,
            "failures": [] if passed else [f"vs simulation: SQNR {metrics['sqnr_db']:.1f} dB < {floor:g} dB"]}


def gate_lowering(logits: np.ndarray, reference_logits: np.ndarray, simulation: dict, simulated: np.ndarray,
                  overrides: GateOverrides = NO_OVERRIDES, random_weights: bool = False) -> dict:
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


def _override(overrides: GateOverrides, name: str, default: float) -> float:
    value = getattr(overrides, name)
    return default if value is None else value


def pair_floor(sqnr_vs_float: tuple[float, float], overrides: GateOverrides = NO_OVERRIDES) -> float:
    """Two int8 artifacts of one plan compute nearly the same function, so they must agree with each other
    better than either agrees with float: the better of their two SQNRs against float plus
    ``--int8-agreement-margin-db`` (``AGREEMENT_MARGIN_DB``), or the fixed ``--min-int8-agreement-db``."""
    if overrides.min_int8_agreement_db is not None:
        return overrides.min_int8_agreement_db
    return round(max(sqnr_vs_float) + _override(overrides, "int8_agreement_margin_db", AGREEMENT_MARGIN_DB), 2)


def int8_agreement(logits: dict[str, np.ndarray], reference_logits: np.ndarray,
                   overrides: GateOverrides = NO_OVERRIDES) -> dict | None:
    """Cross-format consistency: logit SQNR and top-1 agreement of every pair of int8 artifacts of one plan, each
    gated at ``pair_floor``; a pair below means one format's lowering drifted from the plan.  None with fewer
    than two artifacts."""
    vs_float = {name: compare(reference_logits, value)["sqnr_db"] for name, value in logits.items()}
    pairs = []
    for first, second in itertools.combinations(sorted(logits), 2):
        metrics = compare(logits[first], logits[second])
        floor = pair_floor((vs_float[first], vs_float[second]), overrides)
        pairs.append({"artifacts": [first, second], "sqnr_db": to_json_number(metrics["sqnr_db"]),
                      "top1_agreement": metrics["top1_agreement"], "min_sqnr_db": floor,
                      "passed": bool(metrics["sqnr_db"] >= floor)})
    if not pairs:
        return None
    rule = ({"min_sqnr_db": overrides.min_int8_agreement_db} if overrides.min_int8_agreement_db is not None
            else {"margin_db_over_sqnr_vs_float": _override(overrides, "int8_agreement_margin_db",
                                                             AGREEMENT_MARGIN_DB)})
    return {**rule, "pairs": pairs, "passed": all(pair["passed"] for pair in pairs)}


def plan_gate(simulation: dict, vs_float: dict[str, dict], vs_simulation: dict[str, dict],
              pairs: dict[tuple[str, str], float]) -> dict[str, list[str]]:
    """The default rule on measurements already made (``benchmarks/gate_rule.py``), from the same pieces as the
    live gates: failures of the plan, of each artifact (``{name: compare(...) metrics}`` against float and
    against the simulation) and of the pairs."""
    gate, floor = lowering_thresholds(simulation), simulation_floor(simulation)
    failures = {"plan": plan_failures(simulation)}
    for name, metrics in vs_float.items():
        failures[name] = gate.failures(metrics) + ([f"vs simulation: SQNR {vs_simulation[name]['sqnr_db']:.1f} dB"]
                                                   if vs_simulation[name]["sqnr_db"] < floor else [])
    failures["pairs"] = [f"{a}-{b}: {sqnr:.1f} dB" for (a, b), sqnr in pairs.items()
                         if sqnr < pair_floor((vs_float[a]["sqnr_db"], vs_float[b]["sqnr_db"]))]
    return failures


def simulate_plan(model, plan, pixels: np.ndarray, spec, overrides: GateOverrides = NO_OVERRIDES,
                  plan_file: str = "quant_plan.json"):
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


class RecordedOutputs:
    """Logits computed elsewhere (on a phone), gated by ``evaluate`` exactly as a runner's own."""

    def __init__(self, runner, logits: np.ndarray):
        self.format, self.precision, self.logits = runner.format, runner.precision, logits

    def run(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) != len(self.logits):
            raise ValueError(f"{len(self.logits)} recorded outputs for {len(pixels)} images")
        return self.logits
