"""Deliberately broken exports, to prove that a parity gate catches them.

Each fault reproduces a mistake seen in real deployment pipelines and returns the export
inputs (model, preprocessing, calibration pixels) with that mistake applied; the format
exporters are then run unchanged.  ``benchmarks/gate_thresholds.py`` measures every fault on
every format to set the default thresholds, and the tests check that each one fails.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from spnas.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

FAULTS = ("wrong_mean_std", "bgr_channels", "noise_calibration", "shuffled_weight")
SHUFFLED_WEIGHT = "blocks.3.1.conv_dw.weight"


def apply_fault(fault: str, model, spec: PreprocessSpec, calibration_pixels: np.ndarray, seed: int = 0):
    """``(model, spec, calibration_pixels)`` with ``fault`` applied; the inputs are not modified.

    - ``wrong_mean_std``: the [-1, 1] scaling of TF-slim models (mean = std = 0.5) instead of timm's (for a
      model whose own scaling is that one, ImageNet's mean and std instead);
    - ``bgr_channels``: the stem expects BGR, as after an OpenCV-style channel swap in the exporter;
    - ``noise_calibration``: the tutorials' placeholder ``np.random.rand`` representative dataset,
      i.e. uniform [0, 1) noise in the model's normalised input space;
    - ``shuffled_weight``: one depthwise kernel's values permuted, as a broken weight transfer would.
    """
    import torch

    rng = np.random.default_rng(seed)
    if fault == "wrong_mean_std":
        wrong = (0.5, 0.5, 0.5)
        if tuple(spec.mean) == wrong and tuple(spec.std) == wrong:
            return model, replace(spec, mean=IMAGENET_MEAN, std=IMAGENET_STD), calibration_pixels
        return model, replace(spec, mean=wrong, std=wrong), calibration_pixels
    if fault == "noise_calibration":
        unit = rng.random(calibration_pixels.shape, dtype=np.float32)
        pixels = (unit * np.asarray(spec.std, np.float32) + np.asarray(spec.mean, np.float32)) * spec.pixel_divisor
        return model, spec, np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    broken = copy.deepcopy(model).eval()
    with torch.no_grad():
        if fault == "bgr_channels":
            broken.conv_stem.weight.copy_(broken.conv_stem.weight.flip(1))
        elif fault == "shuffled_weight":
            weight = broken.get_parameter(SHUFFLED_WEIGHT)
            order = torch.from_numpy(rng.permutation(weight.numel()))
            weight.copy_(weight.flatten()[order].view_as(weight))
        else:
            raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
    return broken, spec, calibration_pixels
