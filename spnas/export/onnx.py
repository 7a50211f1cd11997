"""ONNX export (fp32 + int8) and its ONNX Runtime runner.

**Exporter.** ``torch.onnx.export(..., dynamo=True)`` at opset 18.  On SPNasNet it gives a clean
graph: BatchNorm is already folded into the convolutions by the onnxscript optimizer (124 nodes:
Conv, Relu, Add, ReduceMean, Reshape, Gemm) and every initializer keeps its timm name
(``blocks.3.1.conv_dw.weight``; the folded biases ``blocks.3.1.conv_dw.weight_bias``, one per
Conv, none shared, and onnxsim renames none).  The TorchScript exporter produces the same op
counts but anonymous ``onnx::Conv_576`` weights, so it is not used.  The graph is then simplified
with onnxsim and checked with ``onnx.checker`` (full check); Conv nodes and the Gemm are renamed to
their timm module names (``blocks.3.1.conv_dw``, ``classifier``), which the int8 lowering relies on.

**Input.** One tensor named ``input``: float32, NCHW ``(1, 3, S, S)`` (``(N, 3, S, S)`` with the
``dynamic_batch`` option; ``S`` the spec's input size), RGB, normalised as ``(pixel / 255 - mean) / std``
with the spec stored in the metadata.  Output ``logits``: float32 ``(N, K)``, one per class.  The int8 model has the
same float input and output: it quantizes its input itself (QDQ), so apps feed both alike.

**Metadata** (``metadata_props``): ``spnas.preprocessing`` (JSON ``PreprocessSpec``),
``spnas.num_classes``, ``spnas.class_names`` (JSON list), ``spnas.weights`` (JSON source + sha256),
``spnas.input``, ``spnas.precision`` and, for int8, ``spnas.int8_scheme``; ``producer_name`` spnas,
``producer_version``, ``model_version``, graph name ``spnasnet_100`` and a ``doc_string`` describing
input, preprocessing and output, so Netron and ``InferenceSession.get_modelmeta()`` show them.

**int8: the export's ``QuantPlan`` lowered, nothing calibrated here** (``lower``; the plan comes
from ``spnas.quantize.plan_to_lower``, shared with TFLite and written to ``quant_plan.json``):

1. the fp32 model gets the weights and bias-corrected biases of the plan's net
   (``QuantPlan.lowered_net``: the BN-folded net with the plan's equalization) in its Conv / Gemm
   initializers (found through each timm-named node's inputs; an error if a layer is missing
   either way);
2. ``quant_pre_process``, then ``quantize_static``: QDQ, **uint8 activations / int8 per-channel
   symmetric weights (U8S8)**, no ``reduce_range``.  Every activation's scale and zero point
   (the plan's int8 grid; uint8 zero point = plan + 128, the same grid) and every layer's
   per-channel weight scales are given as ``TensorQuantOverrides``; ORT 1.32 still insists on a
   calibration reader or cache, so the plan's ranges go in as the ``TensorsData`` cache and no
   image is run.  ``input`` is the graph input, a conv its Relu output (ORT drops the Relu and
   puts the Conv output on that grid), ``blocks.S.B.add`` the Add, ``global_pool`` the
   ReduceMean and the Reshape after it, ``classifier`` the logits: the classifier is int8 too.
   ``plan.float_layers`` are ``nodes_to_exclude``; a plan tensor ORT then leaves float (outputs
   read only by float nodes, e.g. a float classifier's logits) gets its QuantizeLinear ->
   DequantizeLinear pair here, so float layers' outputs stay on the plan's grid as in the simulation;
   the weights are then stored in the chosen ``WEIGHT_ENCODINGS`` (``encode_weights``): ``portable``
   (default) as uint8 + 128 in every layer but the depthwise convs, so ORT runs its U8U8 kernels,
   exact on x86 without VNNI, where its U8S8 kernels saturate 16-bit pair sums (``vpmaddubsw``);
   ``u8s8`` keeps int8 everywhere (about 1.7x faster with VNNI, 33.7 dB instead of the plan's
   function on an emulated AVX2-only Haswell; ``benchmarks/results/cpu_tiers.json``);
3. ``check_lowering`` then refuses (``SpnasError`` naming the tensor) a model in which any plan
   tensor lacks its QuantizeLinear or has another scale (float32-equal) or zero point, anything
   else is quantized, a weight scale differs from the plan's beyond float32 rounding, or an int32
   bias does not dequantize to the plan's bias.  Same plan, same bytes (``--plan`` reproduces it).

Measured (``benchmarks/onnx_int8.py``, ``benchmarks/results/onnx_int8.json``: fixture weights,
plan from labels.csv rows 0-127, rows 600-799; Intel(R) Xeon(R) Processor, 2 cores, AVX-512 VNNI,
ONNX Runtime 1.32, a shared machine at load 3-5): logit SQNR 40.11 dB and top-1 agreement 0.995
against the PyTorch reference, against 40.07 dB / 0.99 for the plan's own simulation (gap
+0.04 dB); ONNX against the simulation 43.6 dB, top-1 0.995.  ORT computes on the plan's
grids and int32 biases (its stem output matches exact integer arithmetic but for 6e-7 of the
values) and on the plan's int8 weights but for 8 of 4.4 M one step off (it rounds the exporter's
float32 BatchNorm fold, not ``spnas.folding``'s); what separates it from the simulation is such
one-step flips, which the net amplifies block by block, not the grids.
Without VNNI, ORT's U8S8 kernels saturate 16-bit pair sums (``vpmaddubsw``) and leave the plan's
function (the earlier ORT-calibrated export: 29.1 dB on an AVX2-only AMD EPYC, 38.0 dB with VNNI,
on the tests' 40 parity images): hence the ``portable`` weight encoding, bit-identical to U8S8
where both are exact, at about fp32 speed on a VNNI CPU (ORT has no VNNI kernel for uint8 weights).

Speed (U8S8 weights, the figures below): int8 / fp32 latency 0.80x at 1 thread (6.1 vs 7.7 ms) and
0.88x at 2 threads (an earlier run: 0.77x / 0.81x; the machine is shared, two other jobs were
running), short of the 0.7x target. ORT's profiler (1 thread) puts the gap in the depthwise
convolutions: int8 QLinearConv 3.6 ms against 1.9 ms for fp32's NCHWc kernels, and the 3-channel
stem 0.9 against 0.4 ms, while the pointwise convolutions, the head and the classifier run 2x faster
in int8 (7.3 -> 3.3 ms). The knobs do not help: S8S8 (the same plan, int8 activations) is 1.26x fp32
(ORT leaves some convolutions unfused), ``session.qdqisint8allowed=1`` makes no difference to U8S8
and makes S8S8 7.5x slower, ``ORT_ENABLE_EXTENDED`` 0.97x. QDQ over QOperator: the same kernels once
ORT fuses QDQ (measured with the earlier calibrated export), and QDQ is the portable form other
execution providers (XNNPACK, NNAPI, QNN) consume.

The runner, and the ONNX Runtime session it uses, are in ``spnas.export.onnx_runtime``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from spnas.errors import SpnasError
from spnas.export import Artifact, ExportContext, artifact_metadata
from spnas.export.onnx_runtime import INPUT_NAME, OUTPUT_NAME, TAKES_BATCHES, load  # noqa: F401  the format's runner
from spnas.io import atomic_path
from spnas.preprocess import DEFAULT_SPEC

SUFFIX = ".onnx"
OPSET = 18
INPUT_DOC = ("input: float32 NCHW (N, 3, S, S), S = spnas.preprocessing input_size, RGB, (pixel / 255 - mean) / std "
             "with spnas.preprocessing; "
             "output logits: float32 (N, num_classes)")
FORMAT = "onnx"
LAYER_OPS = ("Conv", "Gemm")  # the plan's layers: every Conv, and the classifier Gemm
POOL_OPS = ("ReduceMean", "GlobalAveragePool")
RESHAPE_OPS = ("Reshape", "Flatten", "Squeeze")  # after the pool: same values, same grid
# How the plan's int8 weights are stored; both hold the same integers (uint8 = int8 + 128), so the same function,
# but ONNX Runtime picks its kernels by the weight type (docs/int8.md, "ONNX int8 on every CPU").
WEIGHT_ENCODINGS = {
    "portable": "uint8 weights (zero point 128) in every layer but the depthwise convs, int8 there: ONNX Runtime's "
                "U8U8 and depthwise kernels are exact on every x86 and Arm CPU",
    "u8s8": "int8 weights everywhere: ONNX Runtime's fastest kernels with VNNI and on Arm, but on x86 without VNNI "
            "its U8S8 kernels saturate 16-bit pair sums (vpmaddubsw) and leave the plan's function",
}
DEFAULT_WEIGHT_ENCODING = "portable"
UINT8_WEIGHT_ZERO_POINT = 128
SCHEME_TEXT = ("the quant plan lowered by onnxruntime quantize_static: QDQ, uint8 activations on the plan's int8 "
               "grids (zero point + 128), per-channel symmetric weights on the plan's scales ({encoding}), int32 "
               "biases from the plan's corrected biases")


def scheme(weights: str = DEFAULT_WEIGHT_ENCODING) -> dict:
    """The int8 scheme as recorded in the artifact's metadata and report."""
    _check_encoding(weights)
    return {"quant_format": "QDQ", "activation_type": "uint8", "weight_encoding": weights,
            "weight_type": "int8" if weights == "u8s8" else "uint8 (zero point 128); int8 in depthwise convs",
            "per_channel": True, "reduce_range": False}


def _check_encoding(weights: str) -> None:
    if weights not in WEIGHT_ENCODINGS:
        raise SpnasError(f"onnx int8 weights {weights!r}: choose {' or '.join(WEIGHT_ENCODINGS)}")


# ---------------------------------------------------------------- fp32 export


def export_float(model, *, dynamic_batch: bool = False, input_size: int = DEFAULT_SPEC.input_size):
    """PyTorch model -> simplified, checked fp32 ``onnx.ModelProto`` with timm-named Conv and Gemm nodes."""
    import onnxsim
    import torch

    example = torch.zeros(2 if dynamic_batch else 1, 3, input_size, input_size)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes are irrelevant here
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model.eval(), (example,), dynamo=True, opset_version=OPSET,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=dynamic_shapes, verbose=False)
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]  # stack traces with local paths: not for a shipped artifact
    for value in (*proto.graph.input, *proto.graph.output):
        del value.metadata_props[:]
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise SpnasError("onnxsim could not validate the simplified ONNX graph")
    for node in simplified.graph.node:
        if node.op_type in LAYER_OPS and node.input[1].endswith(".weight"):
            node.name = node.input[1].removesuffix(".weight")
    onnx.checker.check_model(simplified, full_check=True)
    return simplified


def set_metadata(proto, ctx: ExportContext, precision: str, extra: dict | None = None) -> None:
    """Write the facts an app needs into the model: ``metadata_props`` (preprocessing, class names, weights),
    producer, version, graph name and a ``doc_string`` saying what goes in and comes out, which
    Netron and ONNX Runtime's ``get_modelmeta()`` show."""
    from spnas.version import __version__

    values = {**artifact_metadata(ctx, precision), "spnas.input": INPUT_DOC,
              "spnas.class_names": json.dumps(list(ctx.class_names)), **(extra or {})}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "spnas", __version__
    major, minor, patch = (int(part) for part in __version__.split(".")[:3])
    proto.model_version = major * 10000 + minor * 100 + patch  # an int64: 0.1.0 -> 100
    proto.graph.name = "spnasnet_100"
    spec = ctx.preprocessing
    proto.doc_string = (
        f"SPNasNet-100 (timm spnasnet_100) image classifier over {len(ctx.class_names)} classes, {precision}, "
        f"exported by spnas {__version__}. Input '{INPUT_NAME}': float32 NCHW (N, 3, {spec.input_size}, "
        f"{spec.input_size}) RGB. Preprocessing: resize the short side to {spec.resize_size} ({spec.interpolation}), "
        f"center crop {spec.input_size}, divide by {spec.pixel_divisor:g}, subtract mean {list(spec.mean)} and "
        f"divide by std {list(spec.std)} per channel (spnas.preprocessing). Output '{OUTPUT_NAME}': float32 "
        f"(N, {len(ctx.class_names)}) logits, softmax for probabilities; class names in spnas.class_names (JSON).")


# ---------------------------------------------------------------- int8: lowering the plan


def _grid(plan, name: str, activations: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
    """A plan tensor's grid as ONNX stores it: float32 scale and, for uint8 activations (the
    default, U8S8), the uint8 zero point (plan + 128); ``"int8"`` (S8S8, studied in the benchmark)
    keeps the plan's own."""
    if activations == "uint8":
        scale, zero_point = plan.tensors[name].as_uint8()
        return np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8)
    if activations == "int8":
        grid = plan.tensors[name]
        return np.asarray(grid.scale, np.float32), np.asarray(grid.zero_point, np.int8)
    raise SpnasError(f"onnx int8: activations {activations!r}: choose uint8 or int8")


def _layer_nodes(proto) -> dict:
    """Conv and Gemm nodes by timm name (``export_float`` names them)."""
    return {node.name: node for node in proto.graph.node if node.op_type in LAYER_OPS}


def with_plan_layers(proto, plan, folded):
    """A copy of the fp32 model whose Conv / Gemm weights and biases are those of ``plan.lowered_net(folded)``:
    the plan's equalization and corrected biases, on the weights the plan's scales were computed from.

    Layers are found by node name (timm name), weight and bias through the node's second and third input
    (the dynamo exporter names the BN-folded Conv biases ``<layer>.weight_bias``, the Gemm's is
    ``classifier.bias``); an initializer another node also reads gets a fresh one, so only this layer
    changes.  Any layer of the plan missing from the graph, or of the graph missing from the plan, is an
    error.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    nodes = _layer_nodes(model)
    _same_layers(nodes, plan)
    initializers = {init.name: init for init in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def set_input(node, index: int, value: np.ndarray, what: str) -> None:
        name = node.input[index] if len(node.input) > index else ""
        if name and name not in initializers:
            raise SpnasError(f"onnx int8: the {what} of {node.name} ({name}) is computed, not an initializer")
        if not name or readers[name] > 1:
            name = f"{node.name}.plan_{what}"
            while name in initializers:
                name += "_"
            while len(node.input) <= index:
                node.input.append("")
            node.input[index] = name
            initializers[name] = model.graph.initializer.add()
        elif int(np.prod(initializers[name].dims)) != value.size:
            raise SpnasError(f"onnx int8: {what} of {node.name} has {int(np.prod(initializers[name].dims))} values, "
                             f"the plan {value.size}")
        shape = list(initializers[name].dims) or list(value.shape)
        initializers[name].CopyFrom(numpy_helper.from_array(value.reshape(shape), name))

    for conv in plan.lowered_net(folded).layers():
        node = nodes[conv.name]
        weight = conv.weight
        if node.op_type == "Gemm":
            attributes = {a.name: a for a in node.attribute}
            if any(key in attributes and attributes[key].f != 1.0 for key in ("alpha", "beta")):
                raise SpnasError(f"onnx int8: Gemm {conv.name} scales its product (alpha or beta != 1)")
            if not ("transB" in attributes and attributes["transB"].i == 1):
                weight = weight.T
        set_input(node, 1, np.ascontiguousarray(weight, np.float32), "weight")
        set_input(node, 2, np.asarray(conv.bias, np.float32), "bias")
    return model


def _same_layers(nodes: dict, plan) -> None:
    missing = [layer for layer in plan.layers if layer not in nodes]
    extra = [name for name in nodes if name not in plan.layers]
    if missing or extra:
        raise SpnasError("onnx int8: the graph's Conv/Gemm nodes do not match the plan's layers "
                         f"(not in the graph: {', '.join(missing) or '-'}; not in the plan: {', '.join(extra) or '-'})")


def plan_tensors(proto, plan) -> dict[str, list[str]]:
    """ONNX tensor names of every plan tensor, in plan order; works on the fp32 and the QDQ graph.

    ``input`` is the graph input; a layer (timm name) is its Relu's output, and also the Conv
    output before it (ORT removes the Relu and quantizes the Conv output on the Relu's grid); a
    conv without ReLU (``conv_pwl``) its own output; ``blocks.S.B.add`` the Add that reads the
    block's last conv; ``global_pool`` the ReduceMean reading ``conv_head`` and every Reshape /
    Flatten / Squeeze after it (one grid for all); ``classifier`` the Gemm's output.  In a QDQ graph
    QuantizeLinear -> DequantizeLinear pairs are looked through.  A tensor that cannot be found is an error.
    """
    graph = proto.graph
    quantized_from = {}  # DequantizeLinear output -> the tensor its QuantizeLinear read
    q_input = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in q_input:
            quantized_from[node.output[0]] = q_input[node.input[0]]
    consumers: dict[str, list] = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input:
            consumers.setdefault(quantized_from.get(name, name), []).append(node)
    nodes = _layer_nodes(proto)
    _same_layers(nodes, plan)
    layers = list(plan.layers)
    found: dict[str, list[str]] = {}

    def only(name: str, candidates: list, what: str):
        if len(candidates) != 1:
            raise SpnasError(f"onnx int8: plan tensor {name}: expected one {what} in the graph, "
                             f"found {len(candidates)}")
        return candidates[0]

    for name in plan.tensors:
        if name == "input":
            found[name] = [only(name, [i.name for i in graph.input if i.name == INPUT_NAME], f"input {INPUT_NAME!r}")]
        elif name in nodes:
            out = nodes[name].output[0]
            following = consumers.get(out, [])
            if len(following) == 1 and following[0].op_type == "Relu":
                found[name] = [following[0].output[0], out]
            else:
                found[name] = [out]
        elif name.endswith(".add"):
            block = name.removesuffix(".add") + "."
            last = [layer for layer in layers if layer.startswith(block)]
            source = found[last[-1]][0] if last else ""
            found[name] = [only(name, [n.output[0] for n in consumers.get(source, []) if n.op_type == "Add"], "Add")]
        elif name == "global_pool":
            source = found[layers[-2]][0]  # the head conv feeds the pool
            pool = only(name, [n for n in consumers.get(source, []) if n.op_type in POOL_OPS], "ReduceMean")
            chain = [pool.output[0]]
            while len(following := consumers.get(chain[-1], [])) == 1 and following[0].op_type in RESHAPE_OPS:
                chain.append(following[0].output[0])
            found[name] = chain
        else:
            raise SpnasError(f"onnx int8: plan tensor {name} has no counterpart in the ONNX graph")
    return found


def prepare_for_quantization(float_path: Path, out_path: Path) -> Path:
    """ORT's ``quant_pre_process``: symbolic shape inference and graph cleanup before quantization."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(float_path), str(out_path))
    return out_path


def quant_overrides(proto, plan, tensors: dict[str, list[str]], activations: str = "uint8") -> dict:
    """ORT ``TensorQuantOverrides``: every activation on its plan grid (uint8), every int8 layer's
    weights on the plan's per-channel scales (symmetric, zero point 0, axis 0: Conv's output
    channels, the Gemm's rows since it reads ``transB=1``)."""
    overrides = {}
    for name, onnx_names in tensors.items():
        scale, zero_point = _grid(plan, name, activations)
        for tensor in onnx_names:
            overrides[tensor] = [{"scale": scale, "zero_point": zero_point}]
    for layer, node in _layer_nodes(proto).items():
        if layer in plan.float_layers:
            continue
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
            raise SpnasError(f"onnx int8: Gemm {layer} does not read its weight transposed (transB=1)")
        overrides[node.input[1]] = [{"axis": 0, "scale": np.asarray(scale, np.float32),
                                     "zero_point": np.asarray(0, np.int8)}
                                    for scale in plan.layers[layer].weight_scales]
    return overrides


def _plan_ranges(plan, tensors: dict[str, list[str]]):
    """The plan's ranges as ORT ``TensorsData``: ``quantize_static`` needs a range for every tensor
    it quantizes (the overrides then set scale and zero point exactly); nothing is calibrated."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = {}
    for name, onnx_names in tensors.items():
        low, high = plan.tensors[name].range
        for tensor in onnx_names:
            data[tensor] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    return TensorsData(CalibrationMethod.MinMax, data)


def lower(float_proto, plan, folded, work_dir: Path, activations: str = "uint8",
          weights: str = DEFAULT_WEIGHT_ENCODING):
    """The int8 QDQ ``onnx.ModelProto`` of a ``QuantPlan``, checked against it (``check_lowering``).

    The fp32 model gets the weights and biases of ``plan.lowered_net(folded)`` (``with_plan_layers``), then
    ``quant_pre_process`` and ``quantize_static``
    (QDQ, U8S8, per-channel, no reduce_range) with every activation grid and weight scale given as
    ``TensorQuantOverrides`` and the plan's ranges as the calibration cache; ``plan.float_layers``
    are ``nodes_to_exclude``; ``weights`` (``WEIGHT_ENCODINGS``) then re-encodes the weights
    (``encode_weights``).  ``activations="int8"`` gives S8S8 instead (slower here: see the module
    docstring); only the benchmark asks for it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    _grid(plan, "input", activations)  # an unknown activation type or weight encoding fails before any work
    _check_encoding(weights)
    work_dir = Path(work_dir)
    planned = work_dir / "plan_layers.onnx"
    onnx.save(with_plan_layers(float_proto, plan, folded), str(planned))
    prepared_path = prepare_for_quantization(planned, work_dir / "prepared.onnx")
    prepared = onnx.load(str(prepared_path))
    tensors = plan_tensors(prepared, plan)
    cache = work_dir / "plan_ranges.json"
    save_tensors_data(_plan_ranges(plan, tensors), cache)
    out_path = work_dir / "int8.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(prepared_path), str(out_path), None, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=False, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=list(plan.float_layers), calibration_cache_path=cache,
                        extra_options={"TensorQuantOverrides": quant_overrides(prepared, plan, tensors, activations),
                                       "ActivationSymmetric": False, "WeightSymmetric": True})
    quantized = onnx.load(str(out_path))
    _quantize_float_gaps(quantized, plan, activations)
    encode_weights(quantized, plan, weights)
    check_lowering(quantized, plan, activations, weights)
    return quantized


def uint8_weight_layers(model, plan, weights: str = DEFAULT_WEIGHT_ENCODING) -> set[str]:
    """The int8 layers whose weights ``weights`` stores as uint8: none for u8s8; for portable every layer
    but the depthwise convs (ORT's depthwise kernels widen to 16 bits before multiplying, so int8 is exact)."""
    _check_encoding(weights)
    if weights == "u8s8":
        return set()
    return {name for name, node in _layer_nodes(model).items() if name not in plan.float_layers
            and not any(a.name == "group" and a.i > 1 for a in node.attribute)}


def encode_weights(model, plan, weights: str = DEFAULT_WEIGHT_ENCODING) -> None:
    """Store the ``uint8_weight_layers`` int8 weights q as uint8 q + 128 with zero point 128 (one for all
    channels, as ORT's QLinearConv requires): the same integers, but ORT then runs its U8U8 kernels, which
    widen to 16 bits and are exact where U8S8's ``vpmaddubsw`` pairs saturate (x86 without VNNI)."""

    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes = _layer_nodes(model)
    for layer in sorted(uint8_weight_layers(model, plan, weights)):
        dequantize = producers.get(nodes[layer].input[1])
        names = list(dequantize.input[:3]) if dequantize is not None and dequantize.op_type == "DequantizeLinear" \
            else []
        if len(names) != 3 or any(name not in initializers or readers[name] != 1 for name in (names[0], names[2])):
            raise SpnasError(f"onnx int8: {layer} does not read its own int8 weights through a DequantizeLinear")
        values, zero_points = (numpy_helper.to_array(initializers[name]) for name in (names[0], names[2]))
        if values.dtype != np.int8 or values.min() < -127 or np.any(zero_points != 0):
            raise SpnasError(f"onnx int8: {layer} weights are not symmetric int8 (zero point 0, -127..127)")
        shifted = (values.astype(np.int16) + UINT8_WEIGHT_ZERO_POINT).astype(np.uint8)
        initializers[names[0]].CopyFrom(numpy_helper.from_array(shifted, names[0]))
        initializers[names[2]].CopyFrom(numpy_helper.from_array(
            np.full(zero_points.shape, UINT8_WEIGHT_ZERO_POINT, np.uint8), names[2]))


def _quantize_float_gaps(model, plan, activations: str = "uint8") -> None:
    """Give a QuantizeLinear -> DequantizeLinear pair to every plan tensor ORT left float.

    A float layer's output is still on the plan's grid (as in the simulation), but ORT quantizes
    a tensor only for a quantized node: the output of a float layer read only by float nodes (two
    adjacent float layers, a float classifier's logits and the pool feeding it) stays float.
    """
    from onnx import helper

    graph = model.graph
    quantized = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    outputs = {value.name for value in graph.output}
    for name, tensors in plan_tensors(model, plan).items():
        if quantized.intersection(tensors):
            continue
        tensor = tensors[-1] if name == "global_pool" else tensors[0]  # after the Reshape; after the ReLU
        scale, zero_point = _grid(plan, name, activations)
        source, result = tensor, f"{tensor}_DequantizeLinear_Output"
        nodes = list(graph.node)
        if tensor in outputs:  # the graph output keeps its name: the producer writes a new one
            source, result = f"{tensor}_QuantizeLinear_Input", tensor
            for node in nodes:
                node.output[:] = [source if out == tensor else out for out in node.output]
        else:
            for node in nodes:
                node.input[:] = [result if value == tensor else value for value in node.input]
        graph.initializer.extend([numpy_helper.from_array(scale, f"{tensor}_scale"),
                                  numpy_helper.from_array(zero_point, f"{tensor}_zero_point")])
        pair = [helper.make_node("QuantizeLinear", [source, f"{tensor}_scale", f"{tensor}_zero_point"],
                                 [f"{tensor}_QuantizeLinear_Output"], f"{tensor}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{tensor}_QuantizeLinear_Output", f"{tensor}_scale",
                                                      f"{tensor}_zero_point"], [result], f"{tensor}_DequantizeLinear")]
        at = next(i for i, node in enumerate(nodes) if source in node.output) + 1  # keep the graph sorted
        del graph.node[:]
        graph.node.extend([*nodes[:at], *pair, *nodes[at:]])


def check_lowering(model, plan, activations: str = "uint8", weights: str = DEFAULT_WEIGHT_ENCODING) -> None:
    """Raise ``SpnasError`` naming the tensor unless the QDQ model computes on exactly the plan's grids.

    Every plan tensor has a QuantizeLinear, each with the plan's scale (float32-equal) and zero
    point (uint8: plan + 128), and no QuantizeLinear quantizes anything else; every int8 layer's weight
    DequantizeLinear has the plan's per-channel scales (float32 rounding), axis 0, int8 weights with
    zero points 0 (uint8 with zero points 128 in the ``weights`` encoding's ``uint8_weight_layers``),
    and its int32 bias, at input scale x weight scale, dequantizes to the plan's bias within half
    a step; a float layer reads float weights and the plan's float bias.
    """

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    tensors = plan_tensors(model, plan)
    owner = {tensor: name for name, names in tensors.items() for tensor in names}
    errors, seen = [], set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        name = owner.get(node.input[0])
        if name is None:
            errors.append(f"{node.input[0]} is quantized on a grid the plan does not have")
            continue
        seen.add(name)
        scale, zero_point = _grid(plan, name, activations)
        got_scale, got_zero = constants.get(node.input[1]), constants.get(node.input[2])
        if (got_scale is None or got_zero is None or got_scale.dtype != np.float32
                or got_zero.dtype != zero_point.dtype or got_scale.size != 1 or got_zero.size != 1
                or got_scale.item() != scale.item() or got_zero.item() != zero_point.item()):
            errors.append(f"{name} ({node.input[0]}): scale {_item(got_scale)}, zero point {_item(got_zero)}; "
                          f"plan {scale.item()!r}, {zero_point.item()} ({zero_point.dtype})")
    errors += [f"{name} is not quantized" for name in plan.tensors if name not in seen]
    eps = float(np.finfo(np.float32).eps)
    uint8_layers = uint8_weight_layers(model, plan, weights)
    for layer, node in _layer_nodes(model).items():
        weight = producers.get(node.input[1])
        if layer in plan.float_layers:
            bias = constants.get(node.input[2]) if len(node.input) > 2 else None
            if weight is not None:
                errors.append(f"{layer} should keep float weights (a float layer), reads {weight.op_type}")
            elif bias is None or not np.array_equal(bias.reshape(-1), np.asarray(plan.layers[layer].bias, np.float32)):
                errors.append(f"{layer}: float bias differs from the plan's")
            continue
        if weight is None or weight.op_type != "DequantizeLinear" or node.input[1] not in producers:
            errors.append(f"{layer} does not read int8 weights through a DequantizeLinear")
            continue
        scales, zeros = constants.get(weight.input[1]), constants.get(weight.input[2])
        want = np.asarray(plan.layers[layer].weight_scales, np.float64)
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        if (scales is None or zeros is None or scales.shape != want.shape or axis != 0
                or not np.all(np.abs(scales.astype(np.float64) - want) <= eps * want)):
            errors.append(f"{layer}: weight scales differ from the plan's per-channel weight_scales")
            continue
        dtype, zero_point = (np.uint8, UINT8_WEIGHT_ZERO_POINT) if layer in uint8_layers else (np.int8, 0)
        if (constants.get(weight.input[0], np.zeros(0)).dtype != dtype or zeros.dtype != dtype
                or np.any(zeros != zero_point)):
            errors.append(f"{layer}: weights are not {np.dtype(dtype).name} with zero point {zero_point} "
                          f"(the {weights} encoding)")
            continue
        bias = producers.get(node.input[2]) if len(node.input) > 2 else None
        if bias is None or bias.op_type != "DequantizeLinear":
            errors.append(f"{layer}: bias is not int32 through a DequantizeLinear")
            continue
        activation = producers.get(node.input[0])
        input_scale = constants.get(activation.input[1]) if activation is not None else None
        step = constants[bias.input[1]].astype(np.float64)
        value = constants[bias.input[0]].astype(np.float64) * step
        if (constants[bias.input[0]].dtype != np.int32 or input_scale is None
                or not np.allclose(step, float(input_scale) * want, rtol=4 * eps, atol=0)
                or np.any(np.abs(value - np.asarray(plan.layers[layer].bias, np.float64)) > 0.5 * step * (1 + 1e-5))):
            errors.append(f"{layer}: int32 bias is not the plan's bias at input scale x weight scale")
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise SpnasError(f"onnx int8 lowering drifted from the quant plan: {'; '.join(errors[:3])}{more}")


def _item(value) -> str:
    if value is None or not value.size:
        return "missing"
    return f"{value.reshape(-1)[0].item()!r} ({value.dtype})"


def _quantized_io(proto) -> dict:
    """Scale / zero point of the graph input's QuantizeLinear, for the report."""

    constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == INPUT_NAME:
            return {"input_scale": float(constants[node.input[1]]),
                    "input_zero_point": int(constants[node.input[2]])}
    return {}


# ---------------------------------------------------------------- contract


def export(ctx: ExportContext) -> list[Artifact]:
    """Write ``spnasnet_100_fp32.onnx`` and, with ``ctx.int8``, ``spnasnet_100_int8.onnx`` (the plan lowered)."""
    dynamic_batch = ctx.options.onnx.dynamic_batch
    ctx.progress("onnx: exporting fp32 (torch.onnx dynamo exporter, onnxsim, checker)")
    size = ctx.preprocessing.input_size
    proto = export_float(ctx.model, dynamic_batch=dynamic_batch, input_size=size)
    set_metadata(proto, ctx, "fp32")
    fp32_path = Path(ctx.out_dir) / f"spnasnet_100_fp32{SUFFIX}"
    with atomic_path(fp32_path) as tmp:
        onnx.save(proto, str(tmp))
    common = {"exporter": "torch.onnx.export(dynamo=True)", "opset": OPSET, "simplified": "onnxsim",
              "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32",
                        "shape": ["N" if dynamic_batch else 1, 3, size, size]},
              "output": OUTPUT_NAME, "dynamic_batch": dynamic_batch}
    artifacts = [Artifact("onnx", "fp32", fp32_path, dict(common))]
    if ctx.options.onnx.coreml_ep:
        from spnas.export.onnx_coreml_ep import export_coreml_ep

        artifacts.append(export_coreml_ep(proto, ctx, common))
    if not ctx.int8:
        return artifacts
    from spnas.folding import fold_batchnorm
    from spnas.quantize import plan_to_lower

    weights = ctx.options.onnx.onnx_int8
    _check_encoding(weights)
    plan, quantization = plan_to_lower(ctx, FORMAT)
    ctx.progress(f"onnx: int8 weights {weights} ({WEIGHT_ENCODINGS[weights].split(':')[0]})")
    with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".onnx-int8.") as work:
        quantized = lower(proto, plan, fold_batchnorm(ctx.model), Path(work), weights=weights)
    onnx.checker.check_model(quantized, full_check=True)
    recorded = {"scheme": SCHEME_TEXT.format(encoding=WEIGHT_ENCODINGS[weights]), **scheme(weights), **quantization}
    set_metadata(quantized, ctx, "int8", {"spnas.int8_scheme": json.dumps(recorded)})
    int8_path = Path(ctx.out_dir) / f"spnasnet_100_int8{SUFFIX}"
    with atomic_path(int8_path) as tmp:
        onnx.save(quantized, str(tmp))
    details = {**common, "quantizer": "onnxruntime.quantization.quantize_static (TensorQuantOverrides from the plan)",
               "quantization": recorded, **_quantized_io(quantized)}
    artifacts.append(Artifact("onnx", "int8", int8_path, details))
    return artifacts
