"""The torch int8 simulation of a plan: what every format's int8 runtime computes, in float.

Weights are rounded to the plan's per-channel grids, each conv adds the plan's bias, and every
tensor of the walk is rounded and clipped to its affine int8 grid (``fake_quant``).  Integer
accumulation is exact in float32 at these sizes, so what remains between this and a runtime is
the runtime's requantization rounding (fixed-point multipliers, int32 biases), measured by
``tests/test_quantize.py`` to be well under 1 dB of logit SQNR.  Layers in ``float_layers``
keep float weights; their outputs are still quantized, as the formats' fallbacks do.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spnas.folding import FoldedNet, NetOps, _apply
from spnas.quantize.plan import QMAX, QMIN, QuantPlan, TensorQuant

WEIGHT_QMAX = 127


def weight_scales(weight: np.ndarray) -> np.ndarray:
    """Per-output-channel symmetric int8 scales, ``max|w| / 127`` (1 for an all-zero channel)."""
    scale = np.abs(weight.reshape(weight.shape[0], -1).astype(np.float64)).max(axis=1) / WEIGHT_QMAX
    scale[scale == 0] = 1.0
    return scale


def quantize_weight(weight: np.ndarray, scales) -> np.ndarray:
    """``weight`` rounded to its per-channel grid, dequantized (float32)."""
    scales = np.asarray(scales, np.float64).reshape(-1, *([1] * (weight.ndim - 1)))
    return (np.clip(np.round(weight / scales), -WEIGHT_QMAX, WEIGHT_QMAX) * scales).astype(np.float32)


def fake_quant(t, grid: TensorQuant):
    import torch

    return (torch.clamp(torch.round(t / grid.scale) + grid.zero_point, QMIN, QMAX) - grid.zero_point) * grid.scale


class Int8Ops(NetOps):
    """The int8 simulation as walk ops (NCHW torch)."""

    def __init__(self, folded: FoldedNet, plan: QuantPlan):
        self.plan = plan
        float_layers = set(plan.float_layers)
        self.layers = {conv.name: replace(conv, weight=conv.weight if conv.name in float_layers
                                          else quantize_weight(conv.weight, plan.layers[conv.name].weight_scales),
                                          bias=np.asarray(plan.layers[conv.name].bias, np.float32))
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
    import torch

    wanted = set(names)

    class Keep(Int8Ops):
        def tensor(self, name, x):
            x = super().tensor(name, x)
            if name in wanted:
                kept.setdefault(name, []).append(x.numpy().copy())
            return x

    kept: dict[str, list] = {}
    ops = Keep(folded, plan)
    with torch.inference_mode():
        for start in range(0, len(x_nchw), batch):
            folded.walk(torch.from_numpy(np.asarray(x_nchw[start:start + batch], np.float32)), ops)
    return {name: np.concatenate(kept[name]) for name in names}
