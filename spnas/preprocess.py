"""timm's eval transform for spnasnet_100, as one serialisable spec.

Reports, parity checks, every runtime runner and the Android app read this spec, so
preprocessing is written down once.  The pipeline is exactly timm's
``transforms_factory.transforms_imagenet_eval``: RGB, resize the short side to
``floor(224 / 0.875) = 256`` with PIL bilinear (antialiased), center-crop 224, scale to
[0, 1], subtract mean and divide by std.  The uint8 crop is the hand-off point: runners
take it, so an artifact with normalisation folded in and one without are fed alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    pixel_divisor: float = 255.0

    @property
    def resize_size(self) -> int:
        return math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict:
        return {**asdict(self), "resize_size": self.resize_size, "mean": list(self.mean),
                "std": list(self.std),
                "steps": ["convert RGB", f"resize short side to {self.resize_size} ({self.interpolation})",
                          f"center crop {self.input_size}", f"divide by {self.pixel_divisor:g}",
                          "subtract mean, divide by std"]}

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        fields = {k: data[k] for k in ("input_size", "crop_pct", "interpolation", "channel_order", "pixel_divisor")
                  if k in data}
        return cls(mean=tuple(data.get("mean", IMAGENET_MEAN)), std=tuple(data.get("std", IMAGENET_STD)),
                   **fields)


DEFAULT_SPEC = PreprocessSpec()


def resize_and_crop(image, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """PIL image -> uint8 (H, W, 3) center crop, as torchvision's Resize + CenterCrop."""
    image = resize(image, spec)
    return np.asarray(image.crop(center_crop_box(image.size, spec)), dtype=np.uint8)


def resize(image, spec: PreprocessSpec = DEFAULT_SPEC):
    """PIL image -> RGB PIL image with its short side resized to ``spec.resize_size`` (torchvision's Resize)."""
    from PIL import Image

    image = image.convert(spec.channel_order)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[spec.interpolation]
    return image.resize(size, resample)


def center_crop_box(size: tuple[int, int], spec: PreprocessSpec = DEFAULT_SPEC) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's CenterCrop on a (width, height) image (an app's ROI)."""
    top = int(round((size[1] - spec.input_size) / 2.0))
    left = int(round((size[0] - spec.input_size) / 2.0))
    return left, top, left + spec.input_size, top + spec.input_size


def load_pixels(path: str | Path, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Read an image file into the uint8 (H, W, 3) crop every runner takes.

    Decoding follows the intake policy (``spnas.intake.open_rgb``): an unusable file raises
    ``spnas.intake.UnusableImage`` naming it.
    """
    from spnas.intake import open_rgb

    return resize_and_crop(open_rgb(path, spec), spec)


def normalize(pixels: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC, layout: str = "NCHW") -> np.ndarray:
    """uint8 (N, H, W, 3) crops -> float32 normalised batch in NCHW (PyTorch) or NHWC (TF)."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    batch = (pixels.astype(np.float32) / np.float32(spec.pixel_divisor) - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if layout == "NCHW" else batch
