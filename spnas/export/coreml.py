"""CoreML: mlprogram ``.mlpackage``, fp16 (``--fp32`` for float32) and int8, checked on Linux.

**Conversion.**  Every package is built from the one walk over the architecture
(``spnas.folding.FoldedNet.walk``, BatchNorm folded) as a MIL program with coremltools'
public MIL Builder (``spnas.export.coreml_mil``), then ``ct.convert`` makes it an ML program
classifier, compute precision float16 by default.  No torch tracing: the float and the int8
packages come from the same builder that TFLite's graph and the int8 simulation share.
Minimum deployment target **iOS 17 / macOS 14 / tvOS 17 / watchOS 10** for every artifact:
the W8A8 package needs the iOS 17 opset (its activation ``quantize``/``dequantize`` ops), and
the float package uses the same target so one app requirement covers both.

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

- ``w8a8`` (default): the *lowering* of the export's int8 plan (``spnas.quantize``, shared
  with TFLite and ONNX, written to ``quant_plan.json``); no calibration of its own.  Weights
  int8 per output channel on the plan's scales (``constexpr_affine_dequantize``), the plan's
  corrected biases on their int32 grid, and every tensor the plan quantizes passes
  ``quantize``/``dequantize`` with the plan's scale and zero point; ``plan.float_layers``
  keep float weights.  Measured (fixture weights, plan from labels.csv rows 0-127, rows
  600-799, Intel Xeon): logit SQNR 40.2 dB, top-1 agreement 0.990 against PyTorch; the plan's
  torch simulation gives 40.2 dB / 0.990 and the package's logits are 41.5 dB from it (fp32
  compute: 40.1 dB / 0.995, 44.5 dB from the simulation: float16 compute costs agreement
  with the simulation, not fidelity).  coremltools' ``LinearQuantizer`` calibration, used
  before, measured 31.6 dB / 0.975.
- ``w8``: weight-only, the same builder with int8 per-channel symmetric weights
  (``max|w| / 127``) and float activations.

**coremltools 9.0 notes.**  Two passes of the default pipeline are left out
(``SKIPPED_PASSES``): ``common::int_op_canonicalization`` rewrites ``dequantize -> reshape ->
quantize`` as a reshape of the int8 tensor without checking that both sides use the same
scale and zero point (it corrupted the classifier input of the former traced W8A8 program;
the builder's programs have no reshape, it stays off as a guard), and
``common::distributive_quantized_binary_op_scale_normalization`` rescales the two inputs of
every residual ``add`` (one to scale 1) and its output ``quantize`` (measured: no change in
fidelity), which would leave the plan's grid in no op of the program.  The float16 pass
(``common::add_fp16_cast``) runs every op in float16, quantize/dequantize included: their
scales, the weight scales and the biases are stored as float16 (the plan's scale rounded to
the nearest float16, within 2**-11 relative), zero points are unchanged.
``common::nullify_redundant_quantization_zero_point`` writes an int8 grid with zero point
-128 (every ReLU output) as uint8 with zero point 0, the same grid.

**Running.**  ``load`` uses ``MLModel.predict`` on macOS and, elsewhere,
``spnas.mil_eval``, a numpy evaluator of the saved program: it proves the program's
semantics as written (ops, weights, quantization parameters, fp16 rounding of every
tensor), not the numerics of Apple's runtime on the Neural Engine, GPU or CPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.export import Artifact, RunnerBase, artifact_metadata, spec_from_metadata
from spnas.export.coreml_mil import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME
from spnas.io import atomic_path
from spnas.mil_eval import MilProgram, import_coremltools, user_metadata
from spnas.preprocess import PreprocessSpec, normalize

if importlib.util.find_spec("coremltools") is None:  # fail on import, so the CLI prints its one-line install hint
    raise ModuleNotFoundError("No module named 'coremltools'", name="coremltools")

SUFFIX = ".mlpackage"
FORMAT = "coreml"
DEPLOYMENT_TARGET = "iOS17"
INT8_MODES = ("w8a8", "w8")
LABEL_NAME = "classLabel"
# Passes of coremltools' default pipeline left out (see the module docstring).
SKIPPED_PASSES = ("common::int_op_canonicalization", "common::distributive_quantized_binary_op_scale_normalization")


def export(ctx) -> list[Artifact]:
    from spnas.export import coreml_mil
    from spnas.folding import fold_batchnorm

    mode = ctx.options.coreml.coreml_int8_mode
    if mode not in INT8_MODES:
        raise SpnasError(f"--coreml-int8-mode {mode!r}: choose from {', '.join(INT8_MODES)}")
    compute = "fp32" if ctx.options.coreml.fp32 else "fp16"
    image_input = ctx.options.coreml.image_input
    ct = import_coremltools()
    spec = ctx.preprocessing
    common = {"converter": f"coremltools {ct.__version__}: MIL Builder program from spnas.folding.FoldedNet.walk, "
                           "ct.convert -> mlprogram",
              "deployment_target": f"{DEPLOYMENT_TARGET} (macOS14, tvOS17, watchOS10)",
              "compute_precision": compute, "input": _input_details(image_input, spec),
              "output": {OUTPUT_NAME: f"float32 (1, {len(ctx.class_names)})", LABEL_NAME: "string, the top class",
                         f"{LABEL_NAME}_probs": "dictionary class name -> softmax probability"},
              "skipped_coremltools_passes": list(SKIPPED_PASSES),
              "linux_check": "spnas.mil_eval: program semantics as written, not Apple runtime numerics"}

    folded = fold_batchnorm(ctx.model)
    ctx.progress(f"building the CoreML ML program ({compute})")
    float_model = _convert(ct, coreml_mil.program(folded, spec, image_input=image_input), compute, ctx.class_names,
                           image_input, spec)
    artifacts = [_save(float_model, ctx, compute, dict(common))]
    if not ctx.int8:
        return artifacts
    if mode == "w8":
        ctx.progress("int8 weights (per-channel symmetric), float activations")
        program = coreml_mil.program(folded, spec, weights_only=True, image_input=image_input)
        variant = {"int8_variant": "w8", "weights": "int8 symmetric per-channel, max|w| / 127 "
                                                    "(constexpr_affine_dequantize)",
                   "activations": f"{compute} (not quantized)"}
    else:
        from spnas.quantize import plan_to_lower

        plan, quantization = plan_to_lower(ctx, FORMAT)
        program = coreml_mil.program(folded, spec, plan=plan, image_input=image_input)
        variant = {"int8_variant": "w8a8",
                   "weights": "int8 symmetric per-channel on the plan's scales (constexpr_affine_dequantize)",
                   "activations": "the plan's int8 grid per tensor: quantize -> dequantize (an int8 zero point "
                                  "of -128 is written as uint8, zero point 0: the same grid)",
                   "quantization": {"scheme": "lowering of the int8 plan: per-channel symmetric int8 weights, "
                                              "affine int8 activations, the plan's corrected biases on their "
                                              "int32 grid (stored float)",
                                    **quantization}}
    artifacts.append(_save(_convert(ct, program, compute, ctx.class_names, image_input, spec), ctx, "int8",
                           {**common, **variant}))
    return artifacts


def _input_details(image_input: bool, spec: PreprocessSpec) -> dict:
    if image_input:
        size = spec.input_size
        return {"name": IMAGE_INPUT_NAME, "type": f"ct.ImageType RGB {size}x{size} (CVPixelBuffer)",
                "scale": 1.0 / spec.pixel_divisor, "bias": [0.0, 0.0, 0.0],
                "in_graph": "subtract mean, divide by std per channel"}
    return {"name": INPUT_NAME, "type": f"float32 (1, 3, {spec.input_size}, {spec.input_size}) NCHW",
            "normalisation": "(pixel / 255 - mean) / std"}


def _convert(ct, program, compute: str, class_names: list[str], image_input: bool, spec: PreprocessSpec):
    """A ``spnas.export.coreml_mil`` program as an ML program classifier: ``classLabel`` and
    ``classLabel_probs`` (ct.ClassifierConfig) and ``logits``, float16 or float32 compute.

    One ``ct.convert`` with every pass: a Builder program declares no output types, so
    coremltools 9.0's fp16 pass does not hit the IndexError a traced torch model with a second
    output gave (it recorded two output types, then indexed them for the classifier's three).
    """
    size = spec.input_size
    inputs = None
    if image_input:
        inputs = [ct.ImageType(name=IMAGE_INPUT_NAME, shape=(1, 3, size, size), scale=1.0 / spec.pixel_divisor,
                               bias=[0.0, 0.0, 0.0], color_layout=ct.colorlayout.RGB)]
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(list(SKIPPED_PASSES))
    classifier = ct.ClassifierConfig(list(class_names), predicted_feature_name=LABEL_NAME,
                                     predicted_probabilities_output=PROBABILITIES_NAME)
    return ct.convert(program, inputs=inputs, classifier_config=classifier, convert_to="mlprogram",
                      minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                      compute_precision=ct.precision.FLOAT32 if compute == "fp32" else ct.precision.FLOAT16,
                      pass_pipeline=pipeline)


def _save(mlmodel, ctx, precision: str, details: dict) -> Artifact:
    from spnas.version import __version__

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


MIL_BATCH = 16  # images per evaluator call: a thread's share of a batch (the evaluator runs them one by one)


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
        """Core ML: one image at a time, the batch size 1 an app uses; the evaluator: ``MIL_BATCH`` images per pass
        (each image's logits are its batch-1 logits, see ``spnas.mil_eval``), a pass per core at a time."""
        if self.backend == "coreml":
            items = prepared if self.image_input else [prepared[i:i + 1] for i in range(len(prepared))]
            outputs = [self._mlmodel.predict({self.input_name: item})[OUTPUT_NAME] for item in items]
        else:
            step = MIL_BATCH if self._program.per_image else 1
            outputs = self._program.run_passes(self.input_name, [prepared[i:i + step]
                                                                 for i in range(0, len(prepared), step)], OUTPUT_NAME)
        return np.concatenate(outputs).astype(np.float32).reshape(len(prepared), -1)


def load(path: str | Path, backend: str = "auto") -> CoreMLRunner:
    path = Path(path)
    if not path.is_dir():
        raise SpnasError(f"{path}: not an .mlpackage directory")
    return CoreMLRunner(path, backend)
