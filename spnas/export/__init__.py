"""spnas.export: one module per format behind one small shape, so parity and benchmarks are written once.

Each format module (``spnas.export.onnx``, ``.tflite``, ``.coreml``, ``.executorch``) provides:

- ``SUFFIX``: the artifact file (or package) suffix, e.g. ``".tflite"``;
- ``export(ctx: ExportContext) -> list[Artifact]``: write the artifacts the context asks for;
- ``load(path) -> Runner``: open an artifact for inference in the format's real runtime (for ONNX
  and TFLite the runner is a module of its own, ``onnx_runtime`` and ``tflite_runtime``, beside the lowering).

A ``Runner`` takes the uint8 (N, S, S, 3) RGB crops of ``spnas.preprocess`` and
returns float32 logits (N, num_classes); it applies normalisation, layout and input
quantization itself, exactly as a deployed app would.  ``prepare`` and ``invoke`` are
split so benchmarks time the runtime alone, not the numpy preprocessing.

Each format's options are typed in ``spnas.export.options``; the export as a whole (sources,
images, gates, report) is ``spnas.pipeline``'s.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spnas.errors import SpnasError
from spnas.export.options import FormatOptions

FORMATS = ("onnx", "tflite", "coreml", "executorch")
EXTRAS = {"onnx": "onnx", "tflite": "tflite", "coreml": "coreml", "executorch": "executorch"}
SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml", ".pte": "executorch"}


class Runner(Protocol):
    format: str
    precision: str  # "fp32" | "fp16" | "int8"

    def prepare(self, pixels: np.ndarray) -> Any:
        """uint8 (N, H, W, 3) RGB crops -> the runtime's input (normalised, laid out, quantized)."""

    def invoke(self, prepared: Any) -> np.ndarray:
        """Run the runtime on prepared input -> float32 logits (N, num_classes)."""

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """``invoke(prepare(pixels))``."""


class RunnerBase:
    """Gives a runner ``run`` from its ``prepare`` and ``invoke``."""

    format: str
    precision: str

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.invoke(self.prepare(pixels))

    def cpu_warning(self) -> str | None:
        """One line when this machine's CPU makes the runtime compute another function than the artifact's."""
        return None


@dataclass
class Artifact:
    format: str
    precision: str
    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)  # extra top-level fields of its report.json entry


def _imagenet_class_names() -> list[str]:
    from spnas.classes import read_class_names

    return read_class_names()


@dataclass
class ExportContext:
    """Everything an exporter needs; built once by the pipeline and shared by all formats."""

    model: Any  # spnas.model.SPNasNet in eval mode, float32
    weights: Any  # spnas.weights.WeightsInfo
    preprocessing: Any  # spnas.preprocess.PreprocessSpec
    calibration_pixels: np.ndarray  # uint8 (N, S, S, 3), S = preprocessing.input_size; disjoint from parity
    out_dir: Path
    int8: bool = False
    options: FormatOptions = field(default_factory=FormatOptions)
    class_names: list[str] = field(default_factory=_imagenet_class_names)  # index-ordered, one per logit
    quant_plan: Any = None  # spnas.quantize.QuantPlan shared by every int8 lowering; None: computed on demand
    progress: Callable[[str], Any] = print


def artifact_metadata(ctx: ExportContext, precision: str) -> dict[str, str]:
    """The facts every artifact carries (each format stores them in its own metadata slot).

    Runners read the preprocessing back from here, as an app would, so an artifact exported
    with the wrong mean/std is caught by parity instead of being silently "fixed" by the runner.
    """
    return {
        "spnas.preprocessing": json.dumps(ctx.preprocessing.to_dict()),
        "spnas.num_classes": str(ctx.model.num_classes),
        "spnas.weights": json.dumps({"source": ctx.weights.source, "sha256": ctx.weights.sha256}),
        "spnas.precision": precision,
    }


def spec_from_metadata(metadata: dict[str, str]):
    """The artifact's preprocessing, or timm's default for artifacts that carry none."""
    from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec

    if "spnas.preprocessing" not in metadata:
        return DEFAULT_SPEC
    return PreprocessSpec.from_dict(json.loads(metadata["spnas.preprocessing"]))


def format_module(name: str):
    """Import a format module lazily, with a one-line hint when its extra is missing."""
    if name not in FORMATS:
        raise SpnasError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    try:
        return importlib.import_module(f"spnas.export.{name}")
    except ModuleNotFoundError as exc:
        raise SpnasError(f"format {name!r} needs {exc.name!r}: pip install 'spnas[{EXTRAS[name]}]'") from exc


def installed_formats() -> tuple[dict[str, Any], dict[str, str]]:
    """``--format all``: the format modules whose extra is installed, and why each other one is skipped."""
    modules, skipped = {}, {}
    for name in FORMATS:
        try:
            modules[name] = format_module(name)
        except SpnasError as exc:
            skipped[name] = str(exc)
    if not modules:
        raise SpnasError("no export format is installed: " + "; ".join(skipped.values()))
    return modules, skipped


def format_of(path: str | Path) -> str:
    """The format of an artifact path, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise SpnasError(f"{path}: unknown artifact type {suffix!r} (expected {', '.join(SUFFIXES)})")


def load_runner(path: str | Path, batch: int | None = None) -> Runner:
    """Open an artifact in its runtime; ``batch``: feed up to that many images per runtime call where the format
    can (``TAKES_BATCHES`` in its module: a resized LiteRT input, a dynamic-batch ONNX session), else one by one."""
    path = Path(path)
    if not path.exists():
        raise SpnasError(f"{path}: no such artifact")
    module = format_module(format_of(path))
    return module.load(path, batch=batch) if batch and getattr(module, "TAKES_BATCHES", False) else module.load(path)
