"""TFLite export: an NHWC TensorFlow graph built from the folded arch description, run in LiteRT.

The graph is written by hand from ``spnas.folding.FoldedNet`` (BatchNorm folded, ReLU fused
into CONV_2D / DEPTHWISE_CONV_2D, global mean then FULLY_CONNECTED), so it is NHWC from the
input on and contains no TRANSPOSE.  PyTorch pads ``k // 2`` on every side; TF ``SAME`` is
identical at stride 1 but pads only bottom/right at stride 2, so stride-2 convs get an
explicit PAD then ``VALID`` (XNNPACK fuses the PAD into the conv).  Every TF op sits in a
``tf.name_scope`` named after its timm module (``blocks.3.1.conv_dw``), so TFLite tensor names
map back to PyTorch (and to the plan's tensors, which ``stamp_ranges`` relies on).

Artifacts (``spnasnet_100_<precision>.tflite``):

- ``fp32``: float32 input ``[1, S, S, 3]`` (``S``: the spec's input size), normalised RGB (the spec's
  mean/std), float32 logits ``[1, K]``;
- ``fp16`` (``ctx.options.tflite.fp16``): the same graph with float16 weights (DEQUANTIZE to float32 at load);
- ``int8`` (``ctx.int8``): full-integer post-training quantization that *lowers* the export's
  ``spnas.quantize.QuantPlan`` (``lower``): the float graph is built with the plan's corrected
  biases, every activation tensor gets the plan's range as its min/max statistics (no TF
  calibration runs), and TF's MLIR quantizer turns that into per-channel symmetric int8
  weights, int8 activations on exactly the plan's grids and int32 biases.  The plan (MSE
  ranges, bias correction against the torch int8 simulation) is computed in ``spnas.quantize``;
  on the fixture weights, protocol rows it measures 0.990 / 40.1 dB here.

Int8 I/O choice.  Default: **int8 input and int8 output**, scale and zero point in
``Artifact.details`` (and in the model's tensor quantization parameters).  An app normalises
as for the float model and quantizes ``q = round(x / scale) + zero_point``: the standard
TFLite full-integer convention, accepted by every delegate and by the TFLite Task/Support
libraries.  ``ctx.options.tflite.uint8_input`` (CLI ``--uint8-input``) instead takes raw uint8
RGB: the normalisation is one in-graph 1x1 depthwise conv placed *before* the stem padding,
so image borders are padded with normalised zeros exactly as in PyTorch (folding it into the
stem weights would pad raw 0, i.e. black, instead of the mean colour; the benchmark measures
what that would cost).  The raw uint8 input is exact (scale 1) and the normalised tensor is
re-quantized once, so fidelity matches the default's (protocol: top-1 0.985 / 37.5 dB vs
0.990 / 37.6 dB, one image apart); the output stays int8 with scale/zero point in ``details``.
Either way the input range is the full range a pixel can produce, not the calibration set's.

MediaPipe app variant (``ctx.options.tflite.app == "mediapipe"``, CLI ``--app mediapipe``):
``spnasnet_100_{fp32,int8}_mediapipe.tflite`` beside the plain files, raw uint8 RGB in (fp32: a
uint8 input CAST to float, then the same in-graph normalisation; int8: the ``--uint8-input``
lowering of the same plan) and float32 softmax probabilities out (``spnas.export.tflite_mediapipe``).
In such a run every artifact's report entry says whether MediaPipe's ImageClassifier takes it, in
its words (without ``--app``: ``null``, not checked).

Per-layer drift (``spnas-verify --explain``) and the fallback's choice of float layers are
format-neutral: they run on the plan's torch simulation (``spnas.quantize.drift``).

Fallback (``spnas-export --fallback auto``): the plan's ``float_layers`` are timm layers that
the MLIR quantizer leaves in float (``denylisted_nodes``); each becomes a float op with float32
weights between a DEQUANTIZE and a QUANTIZE, everything else stays int8.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np

from spnas.console import quiet_stderr
from spnas.errors import SpnasError
from spnas.export import Artifact, ExportContext, artifact_metadata
from spnas.export.tflite_runtime import TAKES_BATCHES, load, open_interpreter, read_metadata  # noqa: F401  the runner
from spnas.folding import NetOps
from spnas.frameworks import import_tensorflow
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec

SUFFIX = ".tflite"
FORMAT = "tflite"

# TF logs C++ INFO/WARNING lines (oneDNN, CPU features, MLIR passes) on import and on every
# conversion; errors (level 2+) stay visible, and setdefault keeps a user's explicit choice.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _tf():
    return import_tensorflow()


# ---------------------------------------------------------------- graph


def build_graph(folded, *, uint8_input: bool = False, spec: PreprocessSpec = DEFAULT_SPEC, uint8_dtype: bool = False):
    """A ``tf.function`` NHWC graph of a ``FoldedNet`` for input ``[1, S, S, 3]``, ``S = spec.input_size``.

    With ``uint8_input`` the function takes raw pixel values (as float32 0..255, quantized to
    uint8 by the converter) and normalises them in-graph before any padding; ``uint8_dtype``
    makes that input a uint8 tensor cast to float in the graph, for a float model that takes bytes.
    """
    tf = _tf()
    ops = _TfOps(folded)
    if uint8_input:
        mean = np.asarray(spec.mean, np.float64)
        std = np.asarray(spec.std, np.float64)
        norm_weight = (1.0 / (spec.pixel_divisor * std)).reshape(1, 1, 3, 1).astype(np.float32)
        norm_bias = (-mean / std).astype(np.float32)

    size = spec.input_size

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8 if uint8_dtype else tf.float32,
                                                name="pixels" if uint8_input else "input")],
                 autograph=False)  # a plain Python walk: autograph would only rewrite it (and logging) at each trace
    def spnasnet(x):
        if uint8_input:
            with tf.name_scope("normalize"):
                x = tf.cast(x, tf.float32) if uint8_dtype else x
                x = tf.nn.bias_add(tf.nn.depthwise_conv2d(x, tf.constant(norm_weight), [1, 1, 1, 1], "VALID"),
                                   tf.constant(norm_bias))
        return folded.walk(x, ops)

    return spnasnet


class _TfOps(NetOps):
    """``FoldedNet.walk`` as NHWC TF ops, each in a name scope named after its timm module."""

    def __init__(self, folded):
        self.constants = {conv.name: _tf_weights(conv) for conv in folded.layers()}

    def conv(self, conv, x):
        tf = _tf()
        weight, bias = self.constants[conv.name]
        with tf.name_scope(conv.name):
            if conv.is_linear:
                return tf.identity(tf.matmul(x, weight) + bias, name="logits")
            kernel = conv.weight.shape[-1]
            if conv.stride == 1 and conv.padding == kernel // 2:
                padding = "SAME"
            else:
                pad = conv.padding
                if pad:
                    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
                padding = "VALID"
            strides = [1, conv.stride, conv.stride, 1]
            if conv.is_depthwise:
                x = tf.nn.depthwise_conv2d(x, weight, strides, padding)
            else:
                x = tf.nn.conv2d(x, weight, strides, padding)
            x = tf.nn.bias_add(x, bias)
            return tf.nn.relu(x) if conv.relu else x

    def add(self, name, out, skip):
        with _tf().name_scope(f"{name}.add"):
            return out + skip

    def pool(self, x):
        tf = _tf()
        with tf.name_scope("global_pool"):
            return tf.reduce_mean(x, axis=[1, 2])


def _tf_weights(conv):
    """PyTorch layout -> TF layout constants: conv HWIO, depthwise (kh, kw, C, 1), dense (in, out)."""
    tf = _tf()
    if conv.is_linear:
        weight = conv.weight.T
    elif conv.is_depthwise:
        weight = conv.weight.transpose(2, 3, 0, 1)
    else:
        weight = conv.weight.transpose(2, 3, 1, 0)
    return tf.constant(np.ascontiguousarray(weight, np.float32)), tf.constant(conv.bias.astype(np.float32))


# ---------------------------------------------------------------- conversion

def _converter(graph):
    tf = _tf()
    return tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)


def convert(folded, precision: str, *, calibration_pixels: np.ndarray | None = None, plan=None,
            uint8_input: bool = False, spec: PreprocessSpec = DEFAULT_SPEC, **plan_options) -> bytes:
    """Convert a ``FoldedNet`` to TFLite flatbuffer bytes: ``fp32``, ``fp16`` or ``int8``.

    int8 lowers ``plan``, or a plan built here from ``calibration_pixels`` with ``plan_options``
    (``spnas.quantize.build_plan``: ``range_setting``, ``clip_weight``, ``bias_correction``,
    ``float_layers``).
    """
    tf = _tf()
    if precision == "int8":
        if plan is None:
            from spnas.quantize import PixelBatches, build_plan

            if calibration_pixels is None or len(calibration_pixels) == 0:
                raise SpnasError("int8 TFLite export needs calibration images")
            plan = build_plan(folded, PixelBatches(calibration_pixels, spec), spec, **plan_options)
        return lower(folded, plan, uint8_input=uint8_input, spec=spec)
    converter = _converter(build_graph(folded, spec=spec))
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}")
    with _quiet_converter():
        return converter.convert()


def lower(folded, plan, *, uint8_input: bool = False, spec: PreprocessSpec = DEFAULT_SPEC) -> bytes:
    """The int8 TFLite model of a ``QuantPlan``: float graph of the plan's net (``lowered_net``: its
    equalization and biases), the plan's ranges on every activation, then TF's MLIR quantizer."""
    net = plan.lowered_net(folded)
    converter = _converter(build_graph(net, uint8_input=uint8_input, spec=spec))
    with _quiet_converter():
        float_model = converter.convert()
    stamped = stamp_ranges(float_model, net, plan, uint8_input)
    return quantize_calibrated(stamped, uint8_input=uint8_input, float_layers=plan.float_layers)


def stamp_ranges(content: bytes, folded, plan, uint8_input: bool = False) -> bytes:
    """Write the plan's range of each tensor as that TFLite tensor's min/max statistics (what a
    TF calibration would have recorded); PAD outputs keep their input's, as the quantizer needs,
    and a ``uint8_input`` model's raw pixel input is 0..255."""
    from tensorflow.lite.python import schema_py_generated as tf_schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(content)
    graph = model.subgraphs[0]

    def stamp(index: int, low: float, high: float) -> None:
        tensor = graph.tensors[index]
        if tensor.quantization is None:
            tensor.quantization = tf_schema.QuantizationParametersT()
        tensor.quantization.min = np.asarray([low], np.float32)
        tensor.quantization.max = np.asarray([high], np.float32)

    activations, _ = _layer_tensors(model, folded)
    for name, index in activations.items():
        stamp(index, *plan.tensors[name].range)
    for output, source in _pad_sources(model).items():
        stamp(output, graph.tensors[source].quantization.min[0], graph.tensors[source].quantization.max[0])
    if uint8_input:
        stamp(graph.inputs[0], 0.0, 255.0)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize_calibrated(calibrated: bytes, *, uint8_input: bool = False, float_layers=()) -> bytes:
    """Full-integer quantization of a calibrated model, as ``TFLiteConverter.convert`` does it:
    per-channel weights (dense layers too), int8 activations, int8 (or uint8) input, int8 output.
    ``float_layers`` (timm names) stay float ops between DEQUANTIZE and QUANTIZE."""
    tf = _tf()
    from tensorflow.lite.python import convert as tf_convert

    denylisted = _op_names(calibrated, float_layers) if float_layers else None
    with _quiet_converter():
        return tf_convert.mlir_quantize(calibrated, input_data_type=tf.uint8 if uint8_input else tf.int8,
                                        output_data_type=tf.int8, denylisted_nodes=denylisted)


def _op_names(calibrated: bytes, layers) -> list[str]:
    """The MLIR quantizer's node names of timm layers: it matches a denylisted node against the
    op's location, which the flatbuffer import takes from the op's full (fused) output tensor name."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=calibrated,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    outputs = _layer_outputs(interpreter, set(layers))
    missing = [name for name in layers if name not in outputs]
    if missing:
        raise SpnasError(f"float layer(s) not in the TFLite graph: {', '.join(missing)}")
    return [outputs[name]["name"] for name in layers]


@contextlib.contextmanager
def _quiet_converter():
    """Silence the converter's expected chatter: the "Statistics for quantized inputs" warning
    (inputs are quantized by the I/O types on purpose) and C++ banners on stderr.  Failures
    still surface as the converter's exceptions, which carry the error message."""
    with warnings.catch_warnings(), quiet_stderr():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        yield


def _layer_tensors(model, folded) -> tuple[dict[str, int], dict[str, int]]:
    """Tensor indices in a TFLite model object: every tensor of ``folded.tensor_names()`` (what a
    ``QuantPlan`` quantizes: ``"input"``, timm conv names, ``"blocks.S.B.add"``, ``"global_pool"``,
    ``"classifier"``), and the bias of every conv / FC by timm name."""
    from ai_edge_litert import schema_py_generated as schema

    kinds = schema.BuiltinOperator
    graph = model.subgraphs[0]
    names = {conv.name for conv in folded.layers()}
    activations, biases = {}, {}
    for kind, op in _op_kinds(model):
        output = op.outputs[0]
        scope = graph.tensors[output].name.decode().split(";")[0].split("/")[0]
        if kind in (kinds.CONV_2D, kinds.DEPTHWISE_CONV_2D, kinds.FULLY_CONNECTED):
            name = "classifier" if kind == kinds.FULLY_CONNECTED else _timm_name(scope, names)
            if name is None:  # the --uint8-input normalisation
                continue
            activations[name], biases[name] = output, op.inputs[2]
            if name == folded.stem.name:
                activations["input"] = op.inputs[0]
        elif kind == kinds.ADD:
            activations[scope] = output
        elif kind == kinds.MEAN:
            activations["global_pool"] = output
    activations["input"] = _pad_sources(model).get(activations["input"], activations["input"])
    return activations, biases


def _op_kinds(model):
    """(builtin operator code, op) for every op of a TFLite model object's graph."""
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        yield max(code.builtinCode, code.deprecatedBuiltinCode), op


def _pad_sources(model) -> dict[int, int]:
    """PAD output tensor -> PAD input tensor (an int8 PAD keeps its input's range)."""
    from ai_edge_litert import schema_py_generated as schema

    return {op.outputs[0]: op.inputs[0] for kind, op in _op_kinds(model) if kind == schema.BuiltinOperator.PAD}


# ---------------------------------------------------------------- export


def export(ctx: ExportContext) -> list[Artifact]:
    """The plain artifacts, and with ``ctx.options.tflite.app == "mediapipe"`` the MediaPipe variants of fp32 and
    int8."""
    from spnas import folding

    folded = folding.fold_batchnorm(ctx.model)
    precisions = ["fp32"] + (["fp16"] if ctx.options.tflite.fp16 else []) + (["int8"] if ctx.int8 else [])
    uint8_input = ctx.options.tflite.uint8_input
    artifacts = []
    for precision in precisions:
        ctx.progress(f"converting {precision} with tf.lite.TFLiteConverter")
        details = _details(ctx)
        if precision == "int8":
            content = _int8(ctx, folded, details, uint8_input)
        else:
            content = convert(folded, precision, spec=ctx.preprocessing)
            if precision == "fp16":
                details["quantization"] = {"scheme": "float16 weights, float32 compute"}
        artifacts.append(_write(ctx, content, precision, details))
    if ctx.options.tflite.app == "mediapipe":
        for precision in [p for p in precisions if p != "fp16"]:
            ctx.progress(f"{precision} variant for MediaPipe Tasks (uint8 RGB in, normalisation in the graph, softmax)")
            details = _details(ctx)
            if precision == "int8":
                content = _int8(ctx, folded, details, uint8_input=True)
            else:
                with _quiet_converter():
                    content = _converter(build_graph(folded, uint8_input=True, spec=ctx.preprocessing,
                                                     uint8_dtype=True)).convert()
            artifacts.append(_write(ctx, content, precision, details, app="mediapipe"))
    return artifacts


def _details(ctx: ExportContext) -> dict:
    size = ctx.preprocessing.input_size
    return {"converter": f"tf.lite.TFLiteConverter {_tf().__version__} (from_concrete_functions)",
            "layout": "NHWC", "input_shape": [1, size, size, 3]}


def _int8(ctx: ExportContext, folded, details: dict, uint8_input: bool) -> bytes:
    """Lower the export's int8 plan (computed once, then shared), recording how in ``details``."""
    from spnas.quantize import plan_to_lower

    plan, quantization = plan_to_lower(ctx, FORMAT)
    details["quantization"] = {
        "scheme": "full-integer PTQ: int8 per-channel symmetric weights, int8 activations, int32 bias",
        **quantization, "uint8_input": uint8_input}
    return lower(folded, plan, uint8_input=uint8_input, spec=ctx.preprocessing)


def _write(ctx: ExportContext, content: bytes, precision: str, details: dict, app: str | None = None) -> Artifact:
    """Add the metadata (and for an app variant the softmax), write the file; with ``--app mediapipe``, ask
    MediaPipe whether it takes it."""
    from spnas.export import tflite_mediapipe
    from spnas.io import atomic_path

    if app == "mediapipe":
        content = tflite_mediapipe.with_softmax(content)
        details["app"] = "MediaPipe Tasks ImageClassifier: raw uint8 RGB crop in, float32 softmax probabilities out"
    content = with_standard_metadata(content, ctx, precision, probabilities=app is not None)
    path = Path(ctx.out_dir) / f"spnasnet_100_{precision}{'_' + app if app else ''}{SUFFIX}"
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    details.update(io_details(content))
    if ctx.options.tflite.app == "mediapipe":  # asking costs a MediaPipe import and graph: only when targeted
        compatible, reason = tflite_mediapipe.verdict(content, ctx.calibration_pixels[0])
    else:
        compatible, reason = None, "not checked (spnas-export --app mediapipe asks MediaPipe's ImageClassifier)"
    return Artifact(FORMAT, precision, path, details,
                    entry={"app": app, "mediapipe": compatible, "mediapipe_reason": reason})


def with_standard_metadata(content: bytes, ctx: ExportContext, precision: str, *, probabilities: bool = False) -> bytes:
    """Our ``spnas.*`` entries, the standard TFLite Metadata and the labels file, on a converted model."""
    from spnas.export import tflite_metadata

    entries = {**artifact_metadata(ctx, precision),
               tflite_metadata.BUFFER_NAME: tflite_metadata.describe(ctx, precision, content,
                                                                     probabilities=probabilities)}
    return tflite_metadata.with_labels(with_metadata(content, entries), ctx.class_names)


def with_metadata(content: bytes, entries: dict[str, str | bytes]) -> bytes:
    """Add named metadata buffers (the flatbuffer's ``metadata`` table) to a TFLite model.

    Repacks the flatbuffer, so files zipped onto its end are dropped: add them afterwards.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() not in entries]
    for name, value in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode() if isinstance(value, str) else value, np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def io_details(content: bytes) -> dict:
    """Input/output dtype, scale and zero point, for the report and for app code."""
    interpreter = open_interpreter(content, num_threads=1)
    facts = {}
    roles = (("input", interpreter.get_input_details()[0]), ("output", interpreter.get_output_details()[0]))
    for role, tensor in roles:
        scale, zero_point = tensor["quantization"]
        facts[role] = {"name": tensor["name"], "dtype": np.dtype(tensor["dtype"]).name,
                       "shape": [int(v) for v in tensor["shape"]]}
        if scale:
            facts[role].update(scale=float(scale), zero_point=int(zero_point))
    if facts["input"]["dtype"] == "uint8":
        size = facts["input"]["shape"][1]
        facts["input"]["meaning"] = f"raw RGB pixels 0..255 of the {size}x{size} center crop"
    else:
        facts["input"]["meaning"] = "normalised RGB ((pixel / 255 - mean) / std)" + (
            ", quantized q = round(x / scale) + zero_point" if facts["input"]["dtype"] == "int8" else "")
    return facts


# ---------------------------------------------------------------- tensor names


def _timm_name(tensor_name: str, names) -> str | None:
    """The timm layer whose name scope produced a TFLite tensor; the classifier's output is "Identity"."""
    scope = tensor_name.split(";")[0].split("/")[0]
    if scope in names:
        return scope
    return "classifier" if scope.startswith("Identity") and "classifier" in names else None


MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def layer_tensor_names(path: str | Path, layers) -> dict[str, str]:
    """timm layer name -> the name of its conv / FC op's output tensor in a ``.tflite`` (Model Explorer's key)."""
    return {name: detail["name"] for name, detail in _layer_outputs(open_interpreter(Path(path)), set(layers)).items()}


def _layer_outputs(interpreter, names) -> dict[str, dict]:
    """Output tensor details of every conv / FC op, keyed by timm layer name (the FC is the classifier)."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    tensors = {}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op-graph view LiteRT offers
        if op["op_name"] in MAC_OPS:
            detail = details[op["outputs"][0]]
            name = "classifier" if op["op_name"] == "FULLY_CONNECTED" else _timm_name(detail["name"], names)
            if name is not None:
                tensors[name] = detail
    return tensors
