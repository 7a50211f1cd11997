"""The torch int8 simulation of a plan: what every format's int8 runtime computes, in float.

The net is the plan's (``QuantPlan.equalized``: the folded net rescaled by its equalization);
weights are rounded to the plan's per-channel grids, each conv adds the plan's bias rounded to
int32 at ``input scale x weight scale`` (as TFLite and ONNX Runtime store it), and every tensor
of the walk is rounded and clipped to its affine int8 grid (``fake_quant``).  What remains
between this and a runtime is the runtime's requantization (fixed-point or float multipliers,
ties), which flips a handful of outputs of the first conv by one step; the net amplifies such
flips by ~2 dB per block, so two correct int8 implementations of one plan agree to ~45 dB at the
logits, not bit for bit (``benchmarks/results/quant_plan.json``).  Layers in ``float_layers``
keep float weights and biases; their outputs are still quantized, as the formats' fallbacks do.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spnas.folding import FoldedNet, NetOps, _apply, _Recorder, torch_batch
from spnas.quantize.plan import QMAX, QMIN, QuantPlan, TensorQuant

WEIGHT_QMAX = 127


def weight_scales(weight: np.ndarray) -> np.ndarray:
    """Per-output-channel symmetric int8 scales, ``max|w| / 127`` (1 for an all-zero channel)."""
    scale = np.abs(weight.reshape(weight.shape[0], -1).astype(np.float64)).max(axis=1) / WEIGHT_QMAX
    scale[scale == 0] = 1.0
    return scale


def _channel_scales(weight: np.ndarray, scales) -> np.ndarray:
    return np.asarray(scales, np.float64).reshape(-1, *([1] * (weight.ndim - 1)))


def int8_weight(weight: np.ndarray, scales) -> np.ndarray:
    """``weight`` as per-output-channel symmetric int8 on ``scales`` (what a format stores)."""
    return np.clip(np.round(weight / _channel_scales(weight, scales)), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)


def quantize_weight(weight: np.ndarray, scales) -> np.ndarray:
    """``weight`` rounded to its per-channel grid, dequantized (float32)."""
    return (int8_weight(weight, scales) * _channel_scales(weight, scales)).astype(np.float32)


def fake_quant(t, grid: TensorQuant):
    """``t`` rounded and clipped to ``grid``, dequantized: one new tensor, the steps in place."""
    return (t / grid.scale).round_().add_(grid.zero_point).clamp_(QMIN, QMAX).sub_(grid.zero_point).mul_(grid.scale)


def quantize_bias(bias, input_scale: float, weight_scales) -> np.ndarray:
    """``bias`` rounded to int32 at ``input scale x weight scale`` per channel, dequantized (float32):
    what TFLite and ONNX Runtime store.  Its rounding shifts ~0.1 % of a conv's outputs by one step,
    and the net amplifies such flips, so a simulation with float biases drifts ~2 dB from the runtimes."""
    step = float(input_scale) * np.asarray(weight_scales, np.float64)
    return (np.round(np.asarray(bias, np.float64) / step) * step).astype(np.float32)


class _ConvInputs(NetOps):
    """The tensor each conv reads: the walk's last quantized tensor before the conv."""

    def __init__(self):
        self.last, self.inputs = None, {}

    def conv(self, conv, x):
        self.inputs[conv.name] = self.last

    def add(self, name, out, skip):
        return None

    def pool(self, x):
        return None

    def tensor(self, name, x):
        self.last = name


def conv_inputs(folded: FoldedNet) -> dict[str, str]:
    """``{conv name: name of its input tensor}`` (``FoldedNet.tensor_names``)."""
    recorder = _ConvInputs()
    folded.walk(None, recorder)
    return recorder.inputs


def lowered_biases(folded: FoldedNet, plan: QuantPlan) -> dict[str, np.ndarray]:
    """Each conv's bias as a lowering stores it: the plan's bias on its int32 grid
    (``quantize_bias``), or as it is for a layer of ``plan.float_layers`` (float32)."""
    inputs = conv_inputs(folded)
    biases = {}
    for conv in folded.layers():
        layer = plan.layers[conv.name]
        biases[conv.name] = (np.asarray(layer.bias, np.float32) if conv.name in plan.float_layers
                             else quantize_bias(layer.bias, plan.tensors[inputs[conv.name]].scale, layer.weight_scales))
    return biases


class Int8Ops(NetOps):
    """The int8 simulation as walk ops (NCHW torch)."""

    def __init__(self, folded: FoldedNet, plan: QuantPlan):
        self.plan = plan
        folded = plan.equalized(folded)
        biases = lowered_biases(folded, plan)
        self.layers = {conv.name: replace(conv, weight=conv.weight if conv.name in plan.float_layers
                                          else quantize_weight(conv.weight, plan.layers[conv.name].weight_scales),
                                          bias=biases[conv.name])
                       for conv in folded.layers()}

    def conv(self, conv, x):
        return _apply(self.layers[conv.name], x)

    def tensor(self, name, x):
        return fake_quant(x, self.plan.tensors[name])


def simulate(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray, batch: int = 16) -> np.ndarray:
    """Logits of the plan's int8 simulation for normalised NCHW inputs."""
    return simulate_tensors(folded, plan, x_nchw, [folded.classifier.name], batch)[folded.classifier.name]


def simulate_tensors(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray, names, batch: int = 16):
    """``{name: values}`` of the simulation's tensors ``names`` (see ``FoldedNet.tensor_names``)."""
    return walk_tensors(folded, Int8Ops(folded, plan), x_nchw, names, batch)


def walk_tensors(folded: FoldedNet, ops: NetOps, x_nchw: np.ndarray, names, batch: int = 16):
    """``{name: values}`` of the tensors ``names`` of ``folded`` walked with ``ops`` (the simulation, or a variant
    of it for a study), ``batch`` images at a time."""
    import torch

    kept: dict[str, list] = {name: [] for name in names}
    with torch.inference_mode():
        for start in range(0, len(x_nchw), batch):
            recorder = _Recorder(ops)
            folded.walk(torch_batch(x_nchw[start:start + batch]), recorder)
            for name in names:
                kept[name].append(recorder.seen[name].numpy().copy())
    return {name: np.concatenate(values) for name, values in kept.items()}
