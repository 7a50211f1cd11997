"""Range setting: each activation tensor's int8 range, observed on the float folded net.

Methods (``RANGE_METHODS``):

- ``"mse"`` (default): the calibrated min/max shrunk, both ends by one factor so zero stays
  exact, to the range minimising the expected squared int8 error on the calibration data:
  rounding noise ``scale^2 / 12`` inside plus ``clip_weight`` times the clipping error
  outside, searched on a 2048-bin histogram.  Min/max lets one outlier set the step of a
  whole tensor; with ReLU's long tails the optimum is typically 0.3-0.9 of the maximum.  A
  clipped value counts ``CLIP_WEIGHT`` = 4 times a rounded one: clipping errors are coherent
  (same sign over a channel) and survive the global pool, rounding noise averages out; 4 beat
  1, 2 and 8 on the protocol and the CLI's seeded splits (``benchmarks/tflite_int8.py``);
- ``"minmax"``: the calibrated min/max;
- ``"percentile"``: each end at the ``percentile`` of the histogram (99.999 by default).

Two tensors are fixed whatever the method: the model **input** gets every value a pixel can
produce under the preprocessing (a brighter or darker photo than any calibration image never
clips) and the **logits** keep their min/max with each end moved out by ``LOGIT_HEADROOM`` of the span: a
few-class head's logits on unseen images overshoot the calibration's extremes (``spnasnet_100_coarse8``: 9.4
on rows 600-799 against 7.9 on 200 calibration images), and a clipped logit costs far more than a coarser step.
With 200 calibration images, 5 % took the simulated logit SQNR of coarse8 from 32.7 to 36.2 dB and of a 4-class
fine-tune from 43.5 to 44.3 dB, left a 6-class probe at 34.4 dB and the fixture at 40.4 dB (from 40.6); 12.5 %
gained less on all but coarse8 (``benchmarks/calibration_size.py``, AVX2-only AMD EPYC).
"""

from __future__ import annotations

import numpy as np

from spnas.folding import FoldedNet, NetOps, TorchOps, torch_batch
from spnas.preprocess import PreprocessSpec
from spnas.quantize.calibration import CalibrationReader, batches

RANGE_METHODS = ("mse", "minmax", "percentile")
CLIP_WEIGHT = 4.0
PERCENTILE = 99.999
LOGIT_HEADROOM = 0.05
HISTOGRAM_BINS = 2048


def input_range(spec: PreprocessSpec) -> tuple[float, float]:
    """Every normalised value a uint8 pixel can produce."""
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    return float((-mean / std).min()), float(((1 - mean) / std).max())


class _Observer(NetOps):
    """Float walk that records min/max (first pass) or histograms within given bounds (second pass)."""

    def __init__(self, bounds: dict | None = None):
        self.float, self.bounds = TorchOps(), bounds
        self.stats: dict = {}

    def conv(self, conv, x):
        return self.float.conv(conv, x)

    def tensor(self, name, x):
        import torch

        if self.bounds is None:
            low, high = (float(v) for v in torch.aminmax(x))  # one pass, not two
            old = self.stats.get(name, (low, high))
            self.stats[name] = (min(old[0], low), max(old[1], high))
        else:
            low, high = self.bounds[name]
            if high > low:
                counts = torch.histc(x.float(), HISTOGRAM_BINS, low, high).double().numpy()
                self.stats[name] = self.stats.get(name, 0) + counts
        return x


def _walk_all(folded: FoldedNet, reader: CalibrationReader, observer: _Observer) -> dict:
    import torch

    with torch.inference_mode():
        for batch in batches(reader):
            folded.walk(torch_batch(batch), observer)
    return observer.stats


def set_ranges(folded: FoldedNet, reader: CalibrationReader, spec: PreprocessSpec, method: str = "mse",
               clip_weight: float = CLIP_WEIGHT, percentile: float = PERCENTILE) -> dict[str, tuple[float, float]]:
    """``{tensor name: (low, high)}`` for every tensor of ``folded.tensor_names()``."""
    if method not in RANGE_METHODS:
        raise ValueError(f"unknown range setting {method!r}: choose from {', '.join(RANGE_METHODS)}")
    bounds = _walk_all(folded, reader, _Observer())
    ranges = dict(bounds)
    if method != "minmax":
        histograms = _walk_all(folded, reader, _Observer(bounds))
        for name, histogram in histograms.items():
            low, high = bounds[name]
            if method == "mse":
                ratio = best_ratio(histogram, low, high, clip_weight)
                ranges[name] = (low * ratio, high * ratio)
            else:
                ranges[name] = _percentile_range(histogram, low, high, percentile)
    ranges["input"] = input_range(spec)
    low, high = bounds[folded.classifier.name]
    ranges[folded.classifier.name] = (low - LOGIT_HEADROOM * (high - low), high + LOGIT_HEADROOM * (high - low))
    return {name: ranges[name] for name in folded.tensor_names()}


def best_ratio(histogram: np.ndarray, low: float, high: float, clip_weight: float = CLIP_WEIGHT) -> float:
    """The shrink factor of [low, high] with the least rounding + ``clip_weight`` x clipping error."""
    edges = np.linspace(low, high, len(histogram) + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    ratios = np.linspace(0.2, 1.0, 81)
    errors = []
    for ratio in ratios:
        a, b = low * ratio, high * ratio
        inside = (centers >= a) & (centers <= b)
        rounding = histogram[inside].sum() * ((b - a) / 255) ** 2 / 12
        clipping = (histogram[~inside] * (np.clip(centers[~inside], a, b) - centers[~inside]) ** 2).sum()
        errors.append(rounding + clip_weight * clipping)
    return float(ratios[int(np.argmin(errors))])


def _percentile_range(histogram: np.ndarray, low: float, high: float, percentile: float) -> tuple[float, float]:
    edges = np.linspace(low, high, len(histogram) + 1)
    cdf = np.cumsum(histogram) / max(histogram.sum(), 1)
    tail = 1 - percentile / 100
    top = edges[min(int(np.searchsorted(cdf, 1 - tail)) + 1, len(edges) - 1)]
    bottom = edges[int(np.searchsorted(cdf, tail))] if low < 0 else low
    return float(bottom), float(top)
