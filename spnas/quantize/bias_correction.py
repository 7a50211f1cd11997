"""Empirical bias correction (Nagel et al. 2019, section 4.2) against the plan's int8 simulation.

Layer by layer in execution order the images go through the float net and through the int8
simulation side by side; each conv's bias is lowered by the mean, per output channel and
before ReLU, of (int8 path - float path), so later layers see the already corrected earlier
ones.  Rounding is unbiased but clipping is not, and ReLU turns noise into a shift:
uncorrected, the shifts add up along the 22 blocks.  On the fixture weights it is worth
2.5-4.5 dB on top of MSE ranges (``benchmarks/tflite_int8.py``).  Memory: all images'
activations of one layer, so it uses at most ``BIAS_CORRECTION_IMAGES`` images.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spnas.folding import FoldedNet, _apply, torch_batch
from spnas.quantize.plan import LayerQuant, QuantPlan
from spnas.quantize.simulate import Int8Ops

BIAS_CORRECTION_IMAGES = 64


class _Corrector(Int8Ops):
    """Walk ops over (float, int8) pairs that correct each conv's bias as the walk reaches it."""

    def __init__(self, folded, plan):
        super().__init__(folded, plan)
        self.float_layers = {conv.name: conv for conv in plan.equalized(folded).layers()}
        self.corrected: dict[str, np.ndarray] = {}

    def conv(self, conv, pair):
        float_in, int8_in = pair
        float_out = _apply(replace(self.float_layers[conv.name], relu=False), float_in)
        int8_out = _apply(replace(self.layers[conv.name], relu=False), int8_in)
        axes = (0,) if conv.is_linear else (0, 2, 3)
        shift = (int8_out - float_out).double().mean(dim=axes).float()
        int8_out -= shift.view(1, -1, *([1] * (int8_out.ndim - 2)))
        self.corrected[conv.name] = (self.layers[conv.name].bias - shift.numpy()).astype(np.float32)
        if conv.relu:
            float_out, int8_out = float_out.relu_(), int8_out.relu_()
        return float_out, int8_out

    def add(self, name, out, skip):
        return out[0] + skip[0], out[1] + skip[1]

    def pool(self, pair):
        return pair[0].mean(dim=(2, 3)), pair[1].mean(dim=(2, 3))

    def tensor(self, name, pair):
        return pair[0], super().tensor(name, pair[1])


def correct_biases(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray) -> QuantPlan:
    """``plan`` with every bias corrected on the (first ``BIAS_CORRECTION_IMAGES``) NCHW inputs."""
    import torch

    corrector = _Corrector(folded, plan)
    with torch.inference_mode():
        x = torch_batch(x_nchw[:BIAS_CORRECTION_IMAGES])
        folded.walk((x, x), corrector)
    layers = {name: LayerQuant(layer.weight_scales, corrector.corrected[name].tolist())
              for name, layer in plan.layers.items()}
    return replace(plan, layers=layers, method={**plan.method, "bias_correction_images": int(len(x))})
