"""timm's eval transform for spnasnet_100, as one serialisable spec.

Reports, parity checks, every runtime runner and the Android app read this spec, so
preprocessing is written down once.  The pipeline is exactly timm's
``transforms_factory.transforms_imagenet_eval``: RGB, resize the short side to
``floor(input_size / crop_pct)`` (224 / 0.875 = 256 by default) with PIL bilinear or bicubic
(antialiased), center-crop ``input_size``, scale to [0, 1], subtract mean and divide by std.
A fine-tune's own values come from its timm ``pretrained_cfg`` (``spec_from_config``), each
overridable from the command line.  The uint8 crop is the hand-off point: runners take it, so
an artifact with normalisation folded in and one without are fed alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from spnas.arch import INPUT_SIZE, MAX_STRIDE
from spnas.errors import SpnasError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")
OVERRIDABLE = ("input_size", "crop_pct", "interpolation", "mean", "std")  # the CLI's --input-size ... --std


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int = INPUT_SIZE
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


def parse_input_size(value) -> int:
    """``192``, ``192x192``, ``[3, 192, 192]`` or ``(192, 192)`` -> 192; a non-square size is an error."""
    if isinstance(value, str):
        parts = [p for p in value.lower().replace("x", ",").split(",") if p.strip()]
    else:
        parts = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        sizes = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise SpnasError(f"input size {value!r}: expected a number of pixels such as 192") from None
    if len(sizes) == 3:
        sizes = sizes[1:]  # timm's (channels, height, width)
    if not 1 <= len(sizes) <= 2:
        raise SpnasError(f"input size {value!r}: expected S or SxS")
    if len(set(sizes)) != 1:
        raise SpnasError(f"input size {value!r}: not square; spnas exports square inputs only (e.g. {max(sizes)})")
    return sizes[0]


def parse_channels(value, name: str) -> tuple[float, ...]:
    """``--mean 0.5,0.5,0.5`` (or a sequence) -> (0.5, 0.5, 0.5); one value means all three channels."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        values = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise SpnasError(f"--{name} {value!r}: expected R,G,B numbers such as 0.5,0.5,0.5") from None
    return values * 3 if len(values) == 1 else values


def check_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """Refuse, in one line, a spec the net or the runners cannot follow."""
    if spec.input_size < MAX_STRIDE:
        raise SpnasError(f"input size {spec.input_size}: too small; SPNasNet's stride is {MAX_STRIDE}, so the input "
                         f"must be at least {MAX_STRIDE}x{MAX_STRIDE}")
    if spec.interpolation not in INTERPOLATIONS:
        raise SpnasError(f"interpolation {spec.interpolation!r}: choose from {', '.join(INTERPOLATIONS)}")
    if not 0 < spec.crop_pct <= 1:
        raise SpnasError(f"crop_pct {spec.crop_pct}: must be in (0, 1]")
    for name in ("mean", "std"):
        values = getattr(spec, name)
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise SpnasError(f"{name} {list(values)}: expected 3 finite values (R, G, B)")
    if min(spec.std) <= 0:
        raise SpnasError(f"std {list(spec.std)}: every value must be positive")
    return spec


def spec_from_config(pretrained_cfg: dict | None, overrides: dict | None = None) -> tuple[PreprocessSpec, dict]:
    """The ``PreprocessSpec`` of a timm ``pretrained_cfg`` (timm's defaults where it is silent), with the
    command line's ``overrides`` (``None`` values ignored) on top; also returns each override as
    ``{name: {"config": value, "override": value}}`` for the report."""
    cfg = pretrained_cfg or {}
    mode = cfg.get("crop_mode", "center")
    if mode != "center":
        raise SpnasError(f"pretrained_cfg crop_mode {mode!r}: only timm's 'center' crop is supported")
    values = {"input_size": parse_input_size(cfg.get("input_size", DEFAULT_SPEC.input_size)),
              "crop_pct": float(cfg.get("crop_pct", DEFAULT_SPEC.crop_pct)),
              "interpolation": str(cfg.get("interpolation", DEFAULT_SPEC.interpolation)),
              "mean": tuple(float(v) for v in cfg.get("mean", DEFAULT_SPEC.mean)),
              "std": tuple(float(v) for v in cfg.get("std", DEFAULT_SPEC.std))}
    applied = {}
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in OVERRIDABLE:
            raise ValueError(f"not a preprocessing override: {name}")
        value = parse_input_size(value) if name == "input_size" else (
            parse_channels(value, name) if name in ("mean", "std") else value)
        config_value = values[name]
        values[name] = value
        applied[name] = {"config": list(config_value) if isinstance(config_value, tuple) else config_value,
                         "override": list(value) if isinstance(value, tuple) else value}
    return check_spec(PreprocessSpec(**values)), applied


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


def normalize(pixels: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC, layout: str = "NCHW") -> np.ndarray:
    """uint8 (N, H, W, 3) crops -> float32 normalised batch in NCHW (PyTorch) or NHWC (TF)."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    batch = (pixels.astype(np.float32) / np.float32(spec.pixel_divisor) - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if layout == "NCHW" else batch
