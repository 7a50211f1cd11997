"""``spnas-export --int8 --fallback auto``: when the plan's int8 simulation fails the gate, keep the
layers where int8 loses the most signal in float, re-plan and re-simulate, then let every format
lower the final plan once.

A round costs one simulated pass over the parity images, not a re-export: the simulation is
what the runtimes compute (within 1 dB, ``tests/test_quantize.py``), so the choice holds for
TFLite, ONNX and CoreML alike, and each artifact is still gated on its own runtime afterwards.
Layers are ranked from ``drift.layer_drift`` (accumulated SQNR of each conv / FC output, graph
order) by how much SQNR drops from the layer before: a layer that merely inherits upstream error
is not worth keeping in float, the one that adds it is.  The first layer's drop is counted from
the best an 8-bit input can be (``INPUT_SQNR_DB``).  A few layers are added per round, for at
most ``MAX_ROUNDS`` rounds; each round keeps the plan's ranges and re-corrects the biases for
the float layers.  If no round passes, the round with the best simulated SQNR is kept.

Keeping one layer in float removes its weight rounding, not the int8 rounding of its output
(the next int8 layer still needs it quantized), so single layers gain little (+0.9 dB at best on
the fixture weights, most within +-0.3 dB); adjacent float layers gain more.
"""

from __future__ import annotations

import numpy as np

from spnas.folding import FoldedNet
from spnas.preprocess import PreprocessSpec
from spnas.quantize.calibration import CalibrationReader
from spnas.quantize.drift import layer_drift
from spnas.quantize.plan import QuantPlan
from spnas.quantize.simulate import simulate

MAX_ROUNDS = 3
INPUT_SQNR_DB = 6.02 * 8 + 1.76  # SQNR of a full-scale signal quantized to 8 bits
DRIFT_IMAGES = 8
HOW = "float layers chosen on the torch int8 simulation of the plan (one simulated pass per round), then lowered once"


def worst_layers(drift: list[dict], kept: list[str], count: int) -> list[str]:
    """The ``count`` layers not in ``kept`` with the largest SQNR drop from the previous layer, worst first."""
    drops = []
    previous = INPUT_SQNR_DB
    for layer in drift:
        drop = previous - layer["sqnr_db"]
        previous = layer["sqnr_db"]
        if layer["layer"] not in kept and np.isfinite(drop):
            drops.append((drop, layer["layer"]))
    return [name for _, name in sorted(drops, key=lambda item: -item[0])[:count]]


def simulated_gate(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray, reference: np.ndarray, thresholds) -> dict:
    """The plan's simulated logits gated as ``spnas.verify.evaluate`` gates an int8 runtime's."""
    from spnas.verify import gate_logits

    return gate_logits(simulate(folded, plan, x_nchw), reference, "int8", thresholds=thresholds)


def fallback(folded: FoldedNet, plan: QuantPlan, reader: CalibrationReader, spec: PreprocessSpec,
             x_nchw: np.ndarray, reference: np.ndarray, thresholds, layers_per_round: int = 3,
             progress=print) -> tuple[QuantPlan, dict | None]:
    """The plan to lower, and the report's ``fallback`` block (None: the plan passed as it was).

    ``x_nchw``: the normalised parity images; ``reference``: their float logits.
    """
    from spnas.quantize import build_plan

    first = simulated_gate(folded, plan, x_nchw, reference, thresholds)
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
                             ranges=ranges, bias_correction=plan.method.get("bias_correction", True), **options)
        result = simulated_gate(folded, current, x_nchw, reference, thresholds)
        parity = result["parity"]
        rounds.append({"round": number, "added": added, "sqnr_db": parity["sqnr_db"],
                       "top1_agreement": parity["top1_agreement"], "passed": result["passed"]})
        progress(f"fallback round {number}: float {', '.join(added)} -> simulated SQNR {parity['sqnr_db']:.1f} dB, "
                 f"top-1 {parity['top1_agreement']:.3f}, {'PASSED' if result['passed'] else 'FAILED'}")
        if result["passed"] or parity["sqnr_db"] > best_result["parity"]["sqnr_db"]:
            best, best_result = current, result
        if result["passed"]:
            break
    block = {"how": HOW, "rounds": rounds, "float_layers": list(best.float_layers),
             "first_attempt_simulated": {"parity": first["parity"], "gate": first["gate"]},
             "final_simulated": {"parity": best_result["parity"], "gate": best_result["gate"]}}
    return best, block
