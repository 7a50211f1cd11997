"""spnas.quantize: the int8 pipeline, computed once for every format.

Every int8 artifact of an export (TFLite, ONNX, CoreML) is a *lowering* of one ``QuantPlan``;
no exporter has numerics of its own.  The whole pipeline is ``build_plan``::

    folded = fold_batchnorm(model)                  # spnas.folding: BN folded, the net every format builds
    reader = PixelBatches(pixels, spec)             # calibration.py: normalised batches, streamed
    factors = equalization_scales(folded, channel_ranges(folded, x[:64]))  # folding.py: ReLU outputs rescaled
    net = rescale(folded, factors)                  # the same float function, flatter channel ranges
    ranges = set_ranges(net, reader, spec, "mse")   # ranges.py: per-tensor ranges on the float net
    plan = QuantPlan(tensors={name: TensorQuant.from_range(*ranges[name])},   # plan.py
                     layers={conv: LayerQuant(weight_scales(conv.weight), conv.bias)},  # of net
                     equalization=factors)
    plan = correct_biases(folded, plan, x)          # bias_correction.py: against the int8 simulation
    logits = simulate(folded, plan, x)              # simulate.py: what the runtimes will compute
    save_plan(plan, out_dir)                        # quant_plan.json beside the artifacts

Everything that reads a plan with the folded net applies its equalization itself
(``QuantPlan.equalized``, ``QuantPlan.lowered_net``), so callers pass ``fold_batchnorm(model)``.
All of it walks the net through ``FoldedNet.walk``, the one description of the block order
that the TF graph builder and the CoreML program builder also use.  Around the plan:

- ``drift.body_sqnr(folded, plan, x)``: the simulation's SQNR against float at the pooled features and
  the logits (``report.json``'s ``int8_plan``); ``drift.layer_drift``: per layer, the SQNR accumulated up
  to it and the local SQNR it adds (``spnas-verify --explain``), the same for every format;
- ``fallback.fallback(...)``: ``--fallback auto``, float layers chosen by the loss they add;
- ``plan_to_lower(ctx, fmt)``: what a format's int8 export starts from (the shared plan,
  ``quant_plan.json`` written, the report's ``quantization`` block).

The formats lower the plan and add no numerics of their own:

- TFLite (``spnas.export.tflite.lower``): the float graph of ``plan.lowered_net(folded)``, every
  activation tensor stamped with the plan's range, then TF's MLIR quantizer;
- ONNX (``spnas.export.onnx.lower``): ONNX Runtime ``quantize_static`` given every scale and
  zero point as ``TensorQuantOverrides`` (uint8 activations: same scale, zero point + 128),
  the float model's weights and biases those of ``plan.lowered_net(folded)``; ``check_lowering``
  refuses any drift;
- CoreML (``spnas.export.coreml_mil.program``): the ML program built from the walk, with
  ``quantize``/``dequantize`` on the plan's grids and ``constexpr_affine_dequantize`` weights.

``spnas-export --plan quant_plan.json`` skips calibration and reproduces the artifacts; a plan
is refused if it was computed for other weights (``QuantPlan.check``).  Another exporter
(ExecuTorch, a vendor SDK) lowers the same plan: build ``plan.lowered_net(folded)``, read
``plan.tensors[name].scale`` /
``.zero_point`` for each tensor of ``FoldedNet.tensor_names()``, ``plan.layers[conv].weight_scales``
and ``.bias`` for each conv (int32 at input scale x weight scale: ``simulate.quantize_bias``), and
keep ``plan.float_layers`` in float.
"""

from __future__ import annotations

import numpy as np

from spnas.folding import (
    ACTIVATION_ALPHA,
    ACTIVATION_CAP,
    FoldedNet,
    channel_ranges,
    equalization_scales,
    fold_batchnorm,
    rescale,
)
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec
from spnas.quantize.bias_correction import BIAS_CORRECTION_IMAGES, correct_biases
from spnas.quantize.calibration import CalibrationReader, PixelBatches
from spnas.quantize.plan import PLAN_FILE, LayerQuant, QuantPlan, TensorQuant, load_plan, save_plan
from spnas.quantize.ranges import CLIP_WEIGHT, LOGIT_HEADROOM, PERCENTILE, RANGE_METHODS, set_ranges
from spnas.quantize.simulate import simulate, simulate_tensors, weight_scales

# Activation equalization takes its per-channel maxima from the first EQUALIZATION_IMAGES calibration images and is
# applied from EQUALIZATION_MIN_IMAGES on (benchmarks/calibration_size.py, four models): with 32 images in all it
# cost 0.6-1.4 dB at the pooled features and with 64 it was mixed (-0.2 to +1.1 dB); from 128 and 200 it gained on
# every model.  Maxima over 128 images instead of 64 reach rarer extremes: the gains shrank, to a 0.2 dB loss on
# the 6-class probe at 200.
EQUALIZATION_IMAGES = 64
EQUALIZATION_MIN_IMAGES = 128

__all__ = ["BIAS_CORRECTION_IMAGES", "CLIP_WEIGHT", "EQUALIZATION_IMAGES", "EQUALIZATION_MIN_IMAGES", "PERCENTILE",
           "PLAN_FILE", "RANGE_METHODS", "CalibrationReader", "LayerQuant", "PixelBatches", "QuantPlan",
           "TensorQuant", "build_plan", "correct_biases", "load_plan", "plan_for", "plan_to_lower", "save_plan",
           "set_ranges", "simulate", "simulate_tensors", "weight_scales"]


def build_plan(folded: FoldedNet, reader: CalibrationReader, spec: PreprocessSpec = DEFAULT_SPEC, *,
               range_setting: str = "mse", clip_weight: float = CLIP_WEIGHT, percentile: float = PERCENTILE,
               bias_correction: bool = True, equalization: bool | dict = True, float_layers=(),
               weights_sha256: str | None = None, ranges: dict | None = None) -> QuantPlan:
    """The int8 plan of ``folded`` calibrated on ``reader`` (``ranges`` given: range setting is skipped).

    ``equalization``: True computes the activation range equalization on the first ``EQUALIZATION_IMAGES``
    images (skipped, and said in ``method``, with fewer than ``EQUALIZATION_MIN_IMAGES`` in all), False leaves
    the net as folded, a ``{producer: factors}`` dict (another plan's) is used as given."""
    missing = sorted(set(float_layers) - {conv.name for conv in folded.layers()})
    if missing:
        from spnas.errors import SpnasError

        raise SpnasError(f"float layer(s) not in the graph: {', '.join(missing)}")
    known_count = len(reader) if hasattr(reader, "__len__") else None
    method = {"range_setting": range_setting, "calibration_images": known_count, "logit_headroom": LOGIT_HEADROOM}
    method.update({"mse": {"clip_weight": clip_weight},
                   "percentile": {"percentile": percentile}}.get(range_setting, {}))
    if equalization is True:
        count = known_count if known_count is not None else len(_first_images(reader, EQUALIZATION_MIN_IMAGES))
        if count < EQUALIZATION_MIN_IMAGES:
            factors = {}
            method["equalization"] = {"rule": "skipped", "reason": f"{count} calibration images, fewer than the "
                                      f"{EQUALIZATION_MIN_IMAGES} it needs"}
        else:
            images = _first_images(reader, EQUALIZATION_IMAGES)
            factors = equalization_scales(folded, channel_ranges(folded, images))
            method["equalization"] = {"rule": "activation ranges", "alpha": ACTIVATION_ALPHA,
                                      "cap": ACTIVATION_CAP, "images": int(len(images))}
    else:
        factors = {name: np.asarray(scale) for name, scale in (equalization or {}).items()}
        method["equalization"] = {"rule": "given"} if factors else None
    net = rescale(folded, factors) if factors else folded
    if ranges is None:
        ranges = set_ranges(net, reader, spec, range_setting, clip_weight, percentile)
    plan = QuantPlan(tensors={name: TensorQuant.from_range(*ranges[name]) for name in net.tensor_names()},
                     layers={conv.name: LayerQuant(weight_scales(conv.weight).tolist(), conv.bias.tolist())
                             for conv in net.layers()},
                     float_layers=list(float_layers), equalization={k: v.tolist() for k, v in factors.items()},
                     method={**method, "bias_correction": bias_correction}, weights_sha256=weights_sha256)
    if bias_correction:
        plan = correct_biases(folded, plan, _first_images(reader, BIAS_CORRECTION_IMAGES))
    return plan


def _first_images(reader: CalibrationReader, count: int) -> np.ndarray:
    taken = []
    reader.rewind()
    while sum(len(b) for b in taken) < count and (batch := reader.get_next()) is not None:
        taken.append(batch)
    return np.concatenate(taken)[:count]


def plan_for(ctx) -> QuantPlan:
    """The export's plan: ``ctx.quant_plan`` when given (``--plan``, the fallback's, or computed once
    for all formats) after checking it fits these weights, else computed from
    ``ctx.calibration_pixels`` and cached on ``ctx``."""
    from spnas.errors import SpnasError

    folded = fold_batchnorm(ctx.model)
    sha = getattr(ctx.weights, "sha256", None)
    if ctx.quant_plan is not None:
        ctx.quant_plan.check(folded, sha)
        return ctx.quant_plan
    if ctx.calibration_pixels is None or len(ctx.calibration_pixels) == 0:
        raise SpnasError("int8 export needs calibration images (or --plan)")
    ctx.quant_plan = build_plan(folded, PixelBatches(ctx.calibration_pixels, ctx.preprocessing), ctx.preprocessing,
                                weights_sha256=sha)
    return ctx.quant_plan


def plan_to_lower(ctx, fmt: str) -> tuple[QuantPlan, dict]:
    """What a format's int8 export starts from: the export's plan (``plan_for``), written to
    ``quant_plan.json`` in ``ctx.out_dir``, and the ``details["quantization"]`` block saying so."""
    if ctx.quant_plan is None:
        ctx.progress(f"int8 plan: ranges and bias correction on {len(ctx.calibration_pixels)} images")
    plan = plan_for(ctx)
    save_plan(plan, ctx.out_dir)
    ctx.progress(f"{fmt}: lowering the int8 plan ({PLAN_FILE})")
    details = {"plan": PLAN_FILE, **plan.method}
    if plan.float_layers:
        details["float_layers"] = list(plan.float_layers)
    return plan, details
