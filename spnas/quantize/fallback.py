"""``spnas-export --int8 --fallback auto``: when the plan's int8 simulation fails the gate, keep the
layers where int8 loses the most signal in float, re-plan and re-simulate, then let every format
lower the final plan once.

A round costs one simulated pass over the parity images, not a re-export: the simulation is
what the runtimes compute (within 1 dB, ``tests/test_quantize.py``), so the choice holds for
TFLite, ONNX and CoreML alike, and each artifact is still gated on its own runtime afterwards.
The plan's gate is the one its lowerings answer to, passed in as ``judge`` (``spnas.gates.plan_judge``:
pooled-feature SQNR, top-1, and a logit SQNR floor when ``--min-sqnr-db`` sets one). Layers are ranked by the
loss each one *adds*, its local SQNR (``drift.layer_drift``: the layer alone in int8 on the float net's input
to it), lowest first: a layer that merely inherits upstream error is not worth keeping in float, the one that
adds it is. A few layers are added per round, for at most ``MAX_ROUNDS`` rounds; each round keeps the plan's
ranges and re-corrects the biases for the float layers. If no round passes, the round with the best simulated
logit SQNR is kept, and when no round gains ``HELPS_DB`` at the logits or the pooled features, one line says
that float layers do not help this plan (its loss is spread through the body, not in a few layers).

Keeping one layer in float removes its weight rounding, not the int8 rounding of its output
(the next int8 layer still needs it quantized), so single layers gain little (+0.9 dB at best on
the fixture weights, most within +-0.3 dB); adjacent float layers gain more.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spnas.folding import FoldedNet
from spnas.preprocess import PreprocessSpec
from spnas.quantize.calibration import CalibrationReader
from spnas.quantize.drift import body_sqnr, layer_drift
from spnas.quantize.plan import QuantPlan

MAX_ROUNDS = 3
DRIFT_IMAGES = 8
HELPS_DB = 0.5  # a fallback that gains less than this at the logits and the pooled features did not help
HOW = ("float layers chosen by the loss each adds (local SQNR) on the torch int8 simulation of the plan "
       "(one simulated pass per round), then lowered once")


def worst_layers(drift: list[dict], kept: list[str], count: int) -> list[str]:
    """The ``count`` layers not in ``kept`` that add the most loss (lowest local SQNR), worst first."""
    ranked = sorted((layer["local_sqnr_db"], layer["layer"]) for layer in drift
                    if layer["layer"] not in kept and np.isfinite(layer["local_sqnr_db"]))
    return [name for _, name in ranked[:count]]


def simulated_gate(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray, judge: Callable[[dict], list[str]]) -> dict:
    """The plan's simulation against float, with the failures ``judge`` finds in it."""
    simulation, _ = body_sqnr(folded, plan, x_nchw)
    failures = judge(simulation)
    return {"parity": {"sqnr_db": simulation["logit_sqnr_db"], "pooled_sqnr_db": simulation["pooled_sqnr_db"],
                       "top1_agreement": simulation["top1_agreement"]},
            "gate": {"status": "failed" if failures else "passed", "failures": failures}, "passed": not failures}


def fallback(folded: FoldedNet, plan: QuantPlan, reader: CalibrationReader, spec: PreprocessSpec,
             x_nchw: np.ndarray, judge: Callable[[dict], list[str]], layers_per_round: int = 3,
             progress=print) -> tuple[QuantPlan, dict | None]:
    """The plan to lower, and the report's ``fallback`` block (None: the plan passed as it was).

    ``x_nchw``: the normalised parity images; ``judge``: a simulation's failures (``spnas.gates.plan_judge``).
    """
    from spnas.quantize import build_plan

    first = simulated_gate(folded, plan, x_nchw, judge)
    if first["passed"]:
        return plan, None
    ranges = {name: grid.range for name, grid in plan.tensors.items()}
    options = {key: plan.method[key] for key in ("range_setting", "clip_weight", "percentile") if key in plan.method}
    best, best_result, kept, rounds = plan, first, list(plan.float_layers), []
    current = plan
    for number in range(1, MAX_ROUNDS + 1):
        added = worst_layers(layer_drift(folded, current, x_nchw[:DRIFT_IMAGES]), kept, layers_per_round)
        if not added:
            break
        kept += added
        current = build_plan(folded, reader, spec, float_layers=kept, weights_sha256=plan.weights_sha256,
                             ranges=ranges, bias_correction=plan.method.get("bias_correction", True),
                             equalization=plan.equalization, **options)
        result = simulated_gate(folded, current, x_nchw, judge)
        parity = result["parity"]
        rounds.append({"round": number, "added": added, **parity, "passed": result["passed"]})
        progress(f"fallback round {number}: float {', '.join(added)} -> simulated SQNR {parity['sqnr_db']:.1f} dB "
                 f"(pooled {parity['pooled_sqnr_db']:.1f}), top-1 {parity['top1_agreement']:.3f}, "
                 f"{'PASSED' if result['passed'] else 'FAILED'}")
        if result["passed"] or parity["sqnr_db"] > best_result["parity"]["sqnr_db"]:
            best, best_result = current, result
        if result["passed"]:
            break
    gains = [best_result["parity"][key] - first["parity"][key] for key in ("sqnr_db", "pooled_sqnr_db")]
    helped = best_result["passed"] or max(gains) >= HELPS_DB
    block = {"how": HOW, "rounds": rounds, "float_layers": list(best.float_layers), "helped": bool(helped),
             "first_attempt_simulated": first, "final_simulated": best_result}
    if not helped:
        block["note"] = (f"no float layer helps: {len(kept) - len(plan.float_layers)} layers kept in float gained "
                         f"{gains[0]:+.1f} dB at the logits, {gains[1]:+.1f} dB at the pooled features; the loss is "
                         "spread through the body (spnas-verify --explain)")
        progress(f"fallback: {block['note']}")
    return best, block
