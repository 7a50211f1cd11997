"""CoreML: mlprogram ``.mlpackage``, fp16 (``--fp32`` for float32) and int8, checked on Linux.

**Conversion.**  ``ct.convert`` of a ``torch.jit.trace`` of the model to an ML program,
compute precision float16 by default.  Minimum deployment target **iOS 17 / macOS 14 /
tvOS 17 / watchOS 10** for every artifact: the W8A8 package needs the iOS 17 opset (its
activation ``quantize``/``dequantize`` ops), and the float package uses the same target
so one app requirement covers both.

**Input.**  By default a float32 ``(1, 3, S, S)`` tensor ``input`` (``S``: the spec's input
size), normalised as ``spnas.preprocess`` does.  With ``image_input`` it is an RGB
``ct.ImageType`` named ``image`` (an app passes an SxS ``CVPixelBuffer``): ``scale`` 1/255,
bias 0, then the spec's mean/std per channel inside the graph, because ImageType's scale is
one scalar and timm's std is per channel.

**Output.**  Every package is a classifier (``ct.ClassifierConfig`` with ``ctx.class_names``), so
Xcode shows its classes and Vision returns ``VNClassificationObservation``s: ``classLabel``
(the top class) and ``classLabel_probs`` (class name -> softmax probability), plus the float32
``logits`` ``(1, num_classes)`` they come from, which the runners return and parity gates.
Metadata (``user_defined_metadata``) holds the preprocessing spec (``spnas.preprocessing``),
the class labels (``spnas.class_labels``), the precision and the int8 variant.

**int8** (``--int8``), ``coreml_int8_mode``:

- ``w8a8`` (default): activations calibrated on Linux with coremltools' PyTorch-side
  ``LinearQuantizer`` used post-training (min/max observers fed the calibration images,
  no training; BatchNorm folded), then converted: int8 per-channel symmetric weights
  (``constexpr_affine_dequantize``) and int8/uint8 per-tensor activation
  ``quantize``/``dequantize`` ops.  (coremltools' PT2E ``CoreMLQuantizer`` cannot be used:
  it imports ``torch.ao.quantization.quantizer``, removed in torch 2.11.)
- ``w8``: weight-only, ``ct.optimize.coreml.linear_quantize_weights`` per-channel
  symmetric on every conv/linear weight; activations stay float.

coremltools 9.0's pass ``common::int_op_canonicalization`` is disabled: it rewrites
``dequantize -> reshape -> quantize`` as a reshape of the int8 tensor without checking that
both sides use the same scale and zero point, which corrupts the classifier input of the
W8A8 program (found by ``spnas.mil_eval``).

**Running.**  ``load`` uses ``MLModel.predict`` on macOS and, elsewhere,
``spnas.mil_eval``, a numpy evaluator of the saved program: it proves the program's
semantics as written (ops, weights, quantization parameters, fp16 rounding of every
tensor), not the numerics of Apple's runtime on the Neural Engine, GPU or CPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.export import Artifact, RunnerBase, artifact_metadata, spec_from_metadata
from spnas.io import atomic_path
from spnas.mil_eval import MilProgram, import_coremltools, user_metadata
from spnas.preprocess import PreprocessSpec, normalize

if importlib.util.find_spec("coremltools") is None:  # fail on import, so the CLI prints its one-line install hint
    raise ModuleNotFoundError("No module named 'coremltools'", name="coremltools")

SUFFIX = ".mlpackage"
DEPLOYMENT_TARGET = "iOS17"
INT8_MODES = ("w8a8", "w8")
INPUT_NAME, IMAGE_INPUT_NAME, OUTPUT_NAME = "input", "image", "logits"
PROBABILITIES_NAME = "probabilities"  # the softmax that ct.ClassifierConfig turns into classLabel + classLabel_probs
LABEL_NAME = "classLabel"
BUGGY_PASSES = ("common::int_op_canonicalization",)
ACTIVATION_OBSERVER = "min_max"
CALIBRATION_BATCH = 16
NOISY_WARNINGS = (".*quantize_per_tensor.*", ".*quantized tensor.*", ".*torch.ao.quantization is deprecated.*",
                  ".*torch.jit.trace.* is deprecated.*")


def _with_normalization(model, spec: PreprocessSpec):
    """``model((x - mean) / std)`` per channel for x in [0, 1]: the part of timm's transform ImageType cannot do."""
    import torch

    class Normalized(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, image):
            return self.model((image - self.mean) * self.inv_std)

    return Normalized().eval()


def _with_softmax(model):
    """``(logits, softmax(logits))``: logits stay an output (parity gates them), the softmax feeds the classifier."""
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            logits = self.model(x)
            return logits, torch.softmax(logits, dim=1)

    return Classifier().eval()


def export(ctx) -> list[Artifact]:
    mode = ctx.options.get("coreml_int8_mode") or "w8a8"
    if mode not in INT8_MODES:
        raise SpnasError(f"--coreml-int8-mode {mode!r}: choose from {', '.join(INT8_MODES)}")
    compute = "fp32" if ctx.options.get("fp32") else "fp16"
    image_input = bool(ctx.options.get("image_input"))
    ct = import_coremltools()
    common = {"converter": f"coremltools {ct.__version__} ct.convert (torch.jit.trace -> mlprogram)",
              "deployment_target": f"{DEPLOYMENT_TARGET} (macOS14, tvOS17, watchOS10)",
              "compute_precision": compute, "input": _input_details(image_input, ctx.preprocessing),
              "output": {OUTPUT_NAME: f"float32 (1, {len(ctx.class_names)})", LABEL_NAME: "string, the top class",
                         f"{LABEL_NAME}_probs": "dictionary class name -> softmax probability"},
              "linux_check": "spnas.mil_eval: program semantics as written, not Apple runtime numerics"}

    ctx.progress(f"converting to a CoreML ML program ({compute})")
    float_model = _convert(ct, ctx.model, ctx.preprocessing, image_input, compute, ctx.class_names)
    artifacts = [_save(float_model, ctx, compute, dict(common))]
    if not ctx.int8:
        return artifacts
    if mode == "w8":
        ctx.progress("int8 weights (linear_quantize_weights, per-channel symmetric)")
        int8_model = _quantize_weights(ct, float_model)
        variant = {"int8_variant": "w8", "weights": "int8 symmetric per-channel (constexpr_affine_dequantize)",
                   "activations": f"{compute} (not quantized)"}
    else:
        ctx.progress(f"calibrating W8A8 activations on {len(ctx.calibration_pixels)} images (LinearQuantizer, PTQ)")
        calibrated = _calibrated_w8a8(ctx.model, ctx.calibration_pixels, ctx.preprocessing)
        ctx.progress("converting the calibrated model to a CoreML ML program (int8)")
        int8_model = _convert(ct, calibrated, ctx.preprocessing, image_input, compute, ctx.class_names)
        variant = {"int8_variant": "w8a8",
                   "quantizer": "coremltools.optimize.torch LinearQuantizer, post-training (observers only)",
                   "weights": "int8 symmetric per-channel (constexpr_affine_dequantize)",
                   "activations": "int8/uint8 symmetric per-tensor quantize/dequantize",
                   "activation_observer": ACTIVATION_OBSERVER,
                   "calibration_images": int(len(ctx.calibration_pixels)),
                   "disabled_coremltools_passes": list(BUGGY_PASSES)}
    artifacts.append(_save(int8_model, ctx, "int8", {**common, **variant}))
    return artifacts


def _input_details(image_input: bool, spec: PreprocessSpec) -> dict:
    if image_input:
        size = spec.input_size
        return {"name": IMAGE_INPUT_NAME, "type": f"ct.ImageType RGB {size}x{size} (CVPixelBuffer)",
                "scale": 1.0 / spec.pixel_divisor, "bias": [0.0, 0.0, 0.0],
                "in_graph": "subtract mean, divide by std per channel"}
    return {"name": INPUT_NAME, "type": f"float32 (1, 3, {spec.input_size}, {spec.input_size}) NCHW",
            "normalisation": "(pixel / 255 - mean) / std"}


def _convert(ct, model, spec: PreprocessSpec, image_input: bool, compute: str, class_names: list[str]):
    """An ML program classifier: ``classLabel`` and ``classLabel_probs`` (ct.ClassifierConfig) and ``logits``.

    coremltools 9.0 cannot convert a classifier that keeps a second output at fp16 (its fp16 pass
    records the two pre-classifier output types, then indexes them for the three outputs after
    ``classify``: IndexError), so the torch model is converted to a MIL program first, with every
    pass, and that program, with the recorded output types cleared, to a classifier without passes.
    """
    import torch

    module = _with_softmax(_with_normalization(model, spec) if image_input else model.eval())
    example = torch.zeros(1, 3, spec.input_size, spec.input_size)
    shape = tuple(example.shape)
    if image_input:
        inputs = [ct.ImageType(name=IMAGE_INPUT_NAME, shape=shape, scale=1.0 / spec.pixel_divisor, bias=[0.0, 0.0, 0.0],
                               color_layout=ct.colorlayout.RGB)]
    else:
        inputs = [ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)]
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(list(BUGGY_PASSES))
    target = getattr(ct.target, DEPLOYMENT_TARGET)
    with warnings.catch_warnings():
        for message in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        with torch.no_grad():
            traced = torch.jit.trace(module, example)
        program = ct.convert(traced, inputs=inputs, outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32),
                                                             ct.TensorType(name=PROBABILITIES_NAME, dtype=np.float32)],
                             convert_to="milinternal", minimum_deployment_target=target,
                             compute_precision=ct.precision.FLOAT32 if compute == "fp32" else ct.precision.FLOAT16,
                             pass_pipeline=pipeline)
        program.functions["main"].set_output_types(None)
        classifier = ct.ClassifierConfig(list(class_names), predicted_feature_name=LABEL_NAME,
                                         predicted_probabilities_output=PROBABILITIES_NAME)
        return ct.convert(program, classifier_config=classifier, convert_to="mlprogram",
                          minimum_deployment_target=target, pass_pipeline=ct.PassPipeline.EMPTY)


def _quantize_weights(ct, float_model):
    """Every conv/linear weight to int8, per output channel, symmetric (weight_threshold=1: none left float)."""
    config = ct.optimize.coreml.OptimizationConfig(global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=1))
    return ct.optimize.coreml.linear_quantize_weights(float_model, config=config)


def _calibrated_w8a8(model, calibration_pixels: np.ndarray, spec: PreprocessSpec):
    """The model with int8 weights and calibrated activation quantizers, ready to trace."""
    import torch
    import torch.ao.quantization as ao_quantization

    import_coremltools()
    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    if len(calibration_pixels) == 0:
        raise SpnasError("CoreML W8A8 needs calibration images")
    config = LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric", weight_per_channel=True, weight_observer="min_max",
        activation_observer=ACTIVATION_OBSERVER, milestones=None))
    quantizer = LinearQuantizer(model, config)
    with warnings.catch_warnings():
        for message in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        example = torch.from_numpy(normalize(calibration_pixels[:1], spec))
        prepared = quantizer.prepare(example_inputs=(example,))  # a copy: ctx.model is untouched
        prepared.eval()  # BatchNorm uses its running statistics while observers record ranges
        prepared.apply(ao_quantization.enable_observer)
        prepared.apply(ao_quantization.disable_fake_quant)
        with torch.no_grad():
            for start in range(0, len(calibration_pixels), CALIBRATION_BATCH):
                prepared(torch.from_numpy(normalize(calibration_pixels[start:start + CALIBRATION_BATCH], spec)))
        prepared.apply(ao_quantization.disable_observer)
        prepared.apply(ao_quantization.enable_fake_quant)
        return quantizer.finalize(inplace=False).eval()


def _save(mlmodel, ctx, precision: str, details: dict) -> Artifact:
    from spnas import __version__

    image_input = details["input"]["name"] == IMAGE_INPUT_NAME
    mlmodel.short_description = (f"SPNasNet-100 (timm spnasnet_100) classifier over {len(ctx.class_names)} classes; "
                                 "outputs: classLabel, classLabel_probs, logits")
    mlmodel.version = __version__
    input_name = IMAGE_INPUT_NAME if image_input else INPUT_NAME
    spec = ctx.preprocessing
    size = spec.input_size
    mlmodel.input_description[input_name] = (
        f"RGB {size}x{size} center crop (resize short side to {spec.resize_size} {spec.interpolation}, crop {size})"
        if image_input else f"float32 NCHW RGB {size}x{size} crop, (pixel / 255 - mean) / std; see spnas.preprocessing")
    mlmodel.output_description[OUTPUT_NAME] = "class logits, in the order of the classifier's labels"
    mlmodel.output_description[LABEL_NAME] = "the most probable class"
    mlmodel.output_description[f"{LABEL_NAME}_probs"] = "softmax probability of every class, by name"
    metadata = mlmodel.user_defined_metadata
    metadata.update(artifact_metadata(ctx, precision))
    metadata["spnas.input"] = "image" if image_input else "tensor"
    metadata["spnas.class_labels"] = json.dumps(list(ctx.class_names))
    metadata["spnas.details"] = json.dumps(details)
    path = Path(ctx.out_dir) / f"spnasnet_100_{precision}{SUFFIX}"
    with atomic_path(path) as tmp:
        mlmodel.save(str(tmp))
        details["mil_ops"] = dict(sorted(MilProgram(tmp).op_counts.items()))
    return Artifact("coreml", precision, path, details)


class CoreMLRunner(RunnerBase):
    """Runs a saved package like an app: reads its preprocessing from the package metadata.

    ``backend``: "mil" (``spnas.mil_eval``, any OS), "coreml" (``MLModel.predict``, macOS), or
    "auto" (coreml on macOS, else mil).
    """

    format = "coreml"

    def __init__(self, path: str | Path, backend: str = "auto"):
        self.path = Path(path)
        metadata = user_metadata(self.path)
        if "spnas.precision" not in metadata:
            raise SpnasError(f"{self.path}: not written by spnas-export (no spnas metadata)")
        self.metadata = metadata
        self.precision = metadata["spnas.precision"]
        self.spec = spec_from_metadata(metadata)
        self.image_input = metadata["spnas.input"] == "image"
        self.input_name = IMAGE_INPUT_NAME if self.image_input else INPUT_NAME
        if backend == "auto":
            backend = "coreml" if sys.platform == "darwin" else "mil"
        if backend == "mil":
            self._program = MilProgram(self.path)
        elif backend == "coreml":
            if sys.platform != "darwin":
                raise SpnasError("MLModel.predict needs macOS; use backend 'mil' (spnas.mil_eval) here")
            self._mlmodel = import_coremltools().models.MLModel(str(self.path))
        else:
            raise SpnasError(f"unknown CoreML backend {backend!r}: choose auto, mil or coreml")
        self.backend = backend

    def prepare(self, pixels: np.ndarray):
        if not self.image_input:
            return normalize(pixels, self.spec, "NCHW")
        if self.backend == "coreml":
            from PIL import Image

            return [Image.fromarray(crop) for crop in pixels]
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).astype(np.float32))

    def invoke(self, prepared) -> np.ndarray:
        """One image at a time: the program has the batch size 1 an app uses."""
        if self.backend == "coreml":
            items = prepared if self.image_input else [prepared[i:i + 1] for i in range(len(prepared))]
            outputs = [self._mlmodel.predict({self.input_name: item})[OUTPUT_NAME] for item in items]
        else:
            outputs = [self._program.run({self.input_name: prepared[i:i + 1]})[OUTPUT_NAME]
                       for i in range(len(prepared))]
        return np.concatenate(outputs).astype(np.float32).reshape(len(outputs), -1)


def load(path: str | Path, backend: str = "auto") -> CoreMLRunner:
    path = Path(path)
    if not path.is_dir():
        raise SpnasError(f"{path}: not an .mlpackage directory")
    return CoreMLRunner(path, backend)
