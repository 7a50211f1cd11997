"""Each format's own export options, typed, in the spirit of coremltools' config objects.

A field is named as its ``spnas-export`` flag (``--onnx-int8`` is ``OnnxOptions.onnx_int8``) and as the
Python API's keyword, so one name means one thing everywhere.  ``FormatOptions.of(**keywords)`` routes
flat keywords to their format and refuses unknown ones or unknown values in one line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from spnas.errors import SpnasError


@dataclass(frozen=True)
class OnnxOptions:
    dynamic_batch: bool = False  # a dynamic batch dimension
    onnx_int8: str = "portable"  # int8 weight encoding: portable (the plan on every CPU) or u8s8 (fast with VNNI)
    coreml_ep: bool = False  # also write *_fp32_coreml_ep.onnx, whole on ORT's Core ML execution provider


@dataclass(frozen=True)
class TFLiteOptions:
    fp16: bool = False  # also write a float16-weight .tflite
    uint8_input: bool = False  # int8 model takes raw uint8 RGB, normalisation folded into the graph
    app: str | None = None  # "mediapipe": also write the MediaPipe Tasks ImageClassifier variants


@dataclass(frozen=True)
class CoreMLOptions:
    fp32: bool = False  # float32 mlprogram instead of the float16 default
    image_input: bool = False  # ct.ImageType input with scale/bias (a CVPixelBuffer in the app)
    coreml_int8_mode: str = "w8a8"  # int8 variant: weights and activations, or weights only (w8)


@dataclass(frozen=True)
class ExecuTorchOptions:
    executorch_int8: str = "plan"  # int8 .pte: lower the export's plan, or ExecuTorch's own PT2E flow (pt2e)
    pte_partitioners: bool = False  # also ask the Vulkan and Core ML partitioners (a to_edge each)


CHOICES = {"onnx_int8": ("portable", "u8s8"), "app": (None, "mediapipe"), "coreml_int8_mode": ("w8a8", "w8"),
           "executorch_int8": ("plan", "pt2e")}


@dataclass(frozen=True)
class FormatOptions:
    onnx: OnnxOptions = field(default_factory=OnnxOptions)
    tflite: TFLiteOptions = field(default_factory=TFLiteOptions)
    coreml: CoreMLOptions = field(default_factory=CoreMLOptions)
    executorch: ExecuTorchOptions = field(default_factory=ExecuTorchOptions)

    def __post_init__(self):
        for name, value in self.keywords().items():
            if name in CHOICES and value not in CHOICES[name]:
                choices = ", ".join(str(choice) for choice in CHOICES[name] if choice is not None)
                raise SpnasError(f"{name}={value!r}: choose from {choices}")

    @classmethod
    def of(cls, **keywords: Any) -> FormatOptions:
        """Flat keywords (``onnx_int8="u8s8"``, ``fp16=True``) routed to their format's options."""
        formats = {name: {} for name in FORMAT_NAMES}
        for key, value in keywords.items():
            owner = OWNER.get(key)
            if owner is None:
                raise SpnasError(f"unknown format option {key!r}; known: {', '.join(sorted(OWNER))}")
            formats[owner][key] = value
        return cls(**{name: OPTION_TYPES[name](**values) for name, values in formats.items()})

    def keywords(self) -> dict[str, Any]:
        """Every option as a flat keyword, the inverse of ``of``."""
        return {key: value for name in FORMAT_NAMES for key, value in dataclasses.asdict(getattr(self, name)).items()}

    def changed(self) -> dict[str, str]:
        """``{keyword: format}`` of the options set away from their default (usage checks: ``--app`` needs TFLite)."""
        default = FormatOptions().keywords()
        return {key: OWNER[key] for key, value in self.keywords().items() if value != default[key]}


OPTION_TYPES = {"onnx": OnnxOptions, "tflite": TFLiteOptions, "coreml": CoreMLOptions, "executorch": ExecuTorchOptions}
FORMAT_NAMES = tuple(OPTION_TYPES)
OWNER = {option.name: name for name, kind in OPTION_TYPES.items() for option in dataclasses.fields(kind)}
