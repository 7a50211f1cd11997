"""ONNX export (fp32 + int8) and its ONNX Runtime runner.

**Exporter.** ``torch.onnx.export(..., dynamo=True)`` at opset 18.  On SPNasNet it gives a clean
graph: BatchNorm is already folded into the convolutions by the onnxscript optimizer (124 nodes:
Conv, Relu, Add, ReduceMean, Reshape, Gemm) and every initializer keeps its timm name
(``blocks.3.1.conv_dw.weight``), which the per-layer error report relies on.  The TorchScript
exporter produces the same op counts but anonymous ``onnx::Conv_576`` weights, so it is not used.
The graph is then simplified with onnxsim and checked with ``onnx.checker`` (full check); Conv
nodes are renamed to their timm module names (``blocks.3.1.conv_dw``).

**Input.** One tensor named ``input``: float32, NCHW ``(1, 3, S, S)`` (``(N, 3, S, S)`` with the
``dynamic_batch`` option; ``S`` the spec's input size), RGB, normalised as ``(pixel / 255 - mean) / std``
with the spec stored in the metadata.  Output ``logits``: float32 ``(N, K)``, one per class.  The int8 model has the
same float input and output: it quantizes its input itself (QDQ), so apps feed both alike.

**Metadata** (``metadata_props``): ``spnas.preprocessing`` (JSON ``PreprocessSpec``),
``spnas.num_classes``, ``spnas.class_names`` (JSON list), ``spnas.weights`` (JSON source + sha256),
``spnas.input``, ``spnas.precision`` and, for int8, ``spnas.int8_scheme``; ``producer_name`` spnas,
``producer_version``, ``model_version``, graph name ``spnasnet_100`` and a ``doc_string`` describing
input, preprocessing and output, so Netron and ``InferenceSession.get_modelmeta()`` show them.

**int8** (measured in ``benchmarks/onnx_int8.py``, figures in ``benchmarks/results/onnx_int8.json``):
``quant_pre_process`` then ``quantize_static`` with QDQ, **uint8 activations / int8 per-channel
symmetric weights (U8S8)**, no ``reduce_range``, ranges from the **Percentile (99.999)** calibrator,
and the classifier Gemm kept in float.  Why each:

- U8S8 is what ONNX Runtime's x86 kernels are built for (VNNI ``vpdpbusd`` is u8 x s8): on this
  2-core VNNI CPU it runs at ~0.55x the fp32 time, while the S8S8 default runs at ~0.9-1.0x.
- Per-channel weights add ~3 dB logit SQNR at no measurable speed cost; ``reduce_range`` (7-bit
  weights, for CPUs without VNNI) costs ~2.5 dB.
- Percentile 99.999 clips the rare activation outliers that MinMax spends the int8 grid on:
  +3.9 dB and top-1 0.98 -> 0.99 on the fixture weights.  It calibrates ~4x slower than MinMax,
  so ``--onnx-calibration minmax`` is offered (ctx option ``onnx_calibration``).
- QDQ over QOperator: same speed and numbers once ORT fuses QDQ, and QDQ is the portable form
  other execution providers (XNNPACK, NNAPI, QNN) consume.
- The classifier (0.4% of the MACs) stays float: +0.5 dB on the logits, no speed cost.

``ctx.options["float_layers"]`` (``spnas-export --fallback auto``) leaves more Conv nodes, by timm
name, in float (ORT ``nodes_to_exclude``): a float Conv fed by a DequantizeLinear.

ONNX Runtime session: ``ORT_ENABLE_ALL`` (it fuses DQ-Conv-Q into QLinearConv and moves int8
convolutions to NHWC; fp32 gets NCHWc; BASIC/EXTENDED were 2.5x / 1.1x slower), sequential
execution, ``intra_op_num_threads`` from ``load(path, num_threads=...)``, thread spinning off
(``spinning=True`` to re-enable; see ``session_options``).  The artifact is the portable QDQ model, not an offline
ORT-optimized one: that one is hardware-specific and only saves session start-up time.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

from spnas.errors import SpnasError
from spnas.export import Artifact, ExportContext, RunnerBase, artifact_metadata, spec_from_metadata
from spnas.io import atomic_path
from spnas.parity import sqnr_db
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize

SUFFIX = ".onnx"
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_DOC = ("input: float32 NCHW (N, 3, S, S), S = spnas.preprocessing input_size, RGB, (pixel / 255 - mean) / std "
             "with spnas.preprocessing; "
             "output logits: float32 (N, num_classes)")
CALIBRATION_METHODS = ("percentile", "minmax", "entropy")
CALIBRATION_CHUNK = 16  # images per collect_data call: bounds the calibrator's memory


@dataclass(frozen=True)
class Int8Scheme:
    """How the int8 model is quantized; the default is the measured choice (module docstring)."""

    quant_format: str = "QDQ"  # or "QOperator"
    activation_type: str = "uint8"  # or "int8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration: str = "percentile"  # one of CALIBRATION_METHODS
    percentile: float = 99.999
    float_classifier: bool = True

    def to_dict(self) -> dict:
        scheme = asdict(self)
        if self.calibration != "percentile":
            del scheme["percentile"]
        return {**scheme, "weight_type": "int8 symmetric"}


# ---------------------------------------------------------------- fp32 export


def export_float(model, *, dynamic_batch: bool = False, input_size: int = DEFAULT_SPEC.input_size):
    """PyTorch model -> simplified, checked fp32 ``onnx.ModelProto`` with timm-named Conv nodes."""
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
        if node.op_type == "Conv" and node.input[1].endswith(".weight"):
            node.name = node.input[1].removesuffix(".weight")
    onnx.checker.check_model(simplified, full_check=True)
    return simplified


def set_metadata(proto, ctx: ExportContext, precision: str, extra: dict | None = None) -> None:
    """Write the facts an app needs into the model: ``metadata_props`` (preprocessing, class names, weights),
    producer, version, graph name and a ``doc_string`` saying what goes in and comes out, which
    Netron and ONNX Runtime's ``get_modelmeta()`` show."""
    from spnas import __version__

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


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict."""
    return {p.key: p.value for p in _load_proto(path).metadata_props}


def _load_proto(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise SpnasError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise SpnasError(f"{path}: not a valid ONNX file ({type(exc).__name__})") from exc


# ---------------------------------------------------------------- int8


class PixelReader:
    """ORT ``CalibrationDataReader`` over uint8 crops: one normalised image per call (static batch)."""

    def __init__(self, pixels: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC):
        self.pixels, self.spec, self.index = pixels, spec, 0

    def get_next(self) -> dict | None:
        if self.index >= len(self.pixels):
            return None
        batch = normalize(self.pixels[self.index:self.index + 1], self.spec)
        self.index += 1
        return {INPUT_NAME: batch}


def prepare_for_quantization(float_path: Path, out_path: Path) -> Path:
    """ORT's ``quant_pre_process``: symbolic shape inference and graph cleanup before calibration."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(float_path), str(out_path))
    return out_path


def calibrate(model_path: Path, pixels: np.ndarray, method: str = "percentile", percentile: float = 99.999,
              spec: PreprocessSpec = DEFAULT_SPEC, work_dir: Path | None = None):
    """Activation ranges (ORT ``TensorsData``) from calibration crops, fed in chunks.

    We drive ORT's calibrator ourselves rather than through ``quantize_static`` so memory stays
    bounded for any number of images (the histogram calibrators otherwise hold every activation
    of every image; ``CalibMaxIntermediateOutputs`` with MinMax silently drops data in ORT 1.32).
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    if method not in CALIBRATION_METHODS:
        raise SpnasError(f"onnx calibration {method!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    if len(pixels) == 0:
        raise SpnasError("int8 ONNX export needs at least one calibration image")
    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
               "entropy": CalibrationMethod.Entropy}
    options = {"percentile": percentile, "symmetric": True} if method == "percentile" else {}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(Path(model_path), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=methods[method], extra_options=options)
        for start in range(0, len(pixels), CALIBRATION_CHUNK):
            calibrator.collect_data(PixelReader(pixels[start:start + CALIBRATION_CHUNK], spec))
        ranges = calibrator.compute_data()
        del calibrator
    return ranges


def quantize(prepared_path: Path, out_path: Path, ranges, scheme: Int8Scheme = Int8Scheme(),
             float_layers=()) -> Path:
    """``quantize_static`` of a pre-processed fp32 model with precomputed activation ranges.

    ``float_layers``: timm names of Conv nodes left in float (``spnas-export --fallback auto``).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    nodes = onnx.load(str(prepared_path), load_external_data=False).graph.node
    missing = sorted(set(float_layers) - {n.name for n in nodes if n.op_type == "Conv"})
    if missing:
        raise SpnasError(f"float layer(s) not in the ONNX graph: {', '.join(missing)}")
    excluded = [n.name for n in nodes if n.op_type == "Gemm"] if scheme.float_classifier else []
    excluded += list(float_layers)
    with tempfile.TemporaryDirectory(dir=Path(out_path).parent) as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(str(prepared_path), str(out_path), None,
                        quant_format=getattr(QuantFormat, scheme.quant_format),
                        activation_type=types[scheme.activation_type], weight_type=QuantType.QInt8,
                        per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                        calibrate_method=ranges.calibration_method, nodes_to_exclude=excluded,
                        calibration_cache_path=cache)
    return Path(out_path)


def scheme_from_options(options: dict) -> Int8Scheme:
    method = options.get("onnx_calibration", "percentile")
    if method not in CALIBRATION_METHODS:
        raise SpnasError(f"--onnx-calibration {method!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    return Int8Scheme(calibration=method)


def _quantized_io(proto) -> dict:
    """Scale / zero point of the graph input's QuantizeLinear, for the report."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == INPUT_NAME:
            return {"input_scale": float(constants[node.input[1]]),
                    "input_zero_point": int(constants[node.input[2]])}
    return {}


# ---------------------------------------------------------------- contract


def export(ctx: ExportContext) -> list[Artifact]:
    """Write ``spnasnet_100_fp32.onnx`` and, with ``ctx.int8``, ``spnasnet_100_int8.onnx``."""
    dynamic_batch = bool(ctx.options.get("dynamic_batch", False))
    scheme = scheme_from_options(ctx.options)
    float_layers = list(ctx.options.get("float_layers", []))
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
    if not ctx.int8:
        return artifacts
    ctx.progress(f"onnx: int8 calibration ({scheme.calibration}) on {len(ctx.calibration_pixels)} images")
    int8_path = Path(ctx.out_dir) / f"spnasnet_100_int8{SUFFIX}"
    with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".onnx-int8.") as work:
        prepared = prepare_for_quantization(fp32_path, Path(work) / "prepared.onnx")
        ranges = calibrate(prepared, ctx.calibration_pixels, scheme.calibration, scheme.percentile,
                           ctx.preprocessing, Path(work))
        quantized = onnx.load(str(quantize(prepared, Path(work) / "int8.onnx", ranges, scheme, float_layers)))
    onnx.checker.check_model(quantized, full_check=True)
    set_metadata(quantized, ctx, "int8", {"spnas.int8_scheme": json.dumps(scheme.to_dict())})
    with atomic_path(int8_path) as tmp:
        onnx.save(quantized, str(tmp))
    details = {**common, "quantizer": "onnxruntime.quantization.quantize_static", **scheme.to_dict(),
               "n_calibration_images": int(len(ctx.calibration_pixels)), **_quantized_io(quantized)}
    if float_layers:
        details["float_layers"] = float_layers
    artifacts.append(Artifact("onnx", "int8", int8_path, details))
    return artifacts


def session_options(num_threads: int | None = None, spinning: bool = False):
    """ORT_ENABLE_ALL, sequential; idle intra-op threads sleep instead of spinning by default.

    Spinning threads fight other processes for the cores: on the shared 2-core benchmark machine
    turning it off made 2-thread fp32 1.8x and int8 3x faster (benchmarks/onnx_int8.py).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRunner(RunnerBase):
    """An ONNX file in ONNX Runtime's CPU provider, fed like an app feeds it."""

    format = "onnx"

    def __init__(self, path: str | Path, num_threads: int | None = None, spinning: bool = False):
        proto = _load_proto(path)
        metadata = {p.key: p.value for p in proto.metadata_props}
        self.path = Path(path)
        self.metadata = metadata
        self.spec = spec_from_metadata(metadata)
        quantized = any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in proto.graph.node)
        self.precision = metadata.get("spnas.precision", "int8" if quantized else "fp32")
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), session_options(num_threads, spinning),
                                                providers=["CPUExecutionProvider"])
        except (InvalidProtobuf, InvalidGraph, Fail) as exc:
            raise SpnasError(f"{path}: ONNX Runtime cannot load it ({str(exc).strip().splitlines()[0][:160]})") \
                from exc
        batch = self.session.get_inputs()[0].shape[0]
        self.batch_size = batch if isinstance(batch, int) else 32

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        return normalize(pixels, self.spec, "NCHW")

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        outputs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: prepared[start:start + self.batch_size]})[0]
                   for start in range(0, len(prepared), self.batch_size)]
        return self.decode(np.concatenate(outputs))

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """The ``logits`` output as float32; also for outputs a phone returned."""
        return np.asarray(raw).astype(np.float32)


def load(path: str | Path, num_threads: int | None = None, spinning: bool = False) -> OnnxRunner:
    """Open an ONNX artifact in ONNX Runtime; ``num_threads`` sets intra-op threads (None: ORT default)."""
    return OnnxRunner(path, num_threads, spinning)


# ---------------------------------------------------------------- explain


def explain(path: str | Path, pixels: np.ndarray, model) -> list[dict]:
    """``spnas-verify --explain``: per-layer drift of an int8 artifact against a fresh fp32 export of ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "reference_fp32.onnx"
        onnx.save(export_float(model), str(float_path))
        return [{"layer": name, "sqnr_db": value} for name, value in layer_sqnr(float_path, path, pixels).items()]


def layer_sqnr(float_path: str | Path, int8_path: str | Path, pixels: np.ndarray,
               num_threads: int | None = None) -> dict[str, float]:
    """Per-layer int8 activation SQNR in dB, keyed by timm conv name, in execution order.

    For every convolution (``conv_stem``, ``blocks.2.1.conv_dw``, ``conv_head``) it compares the
    int8 model's dequantized output (after the ReLU, which QDQ folds into the conv's quantization)
    with the fp32 model's on the same crops, both end to end, so the figure includes the error
    accumulated upstream: where it drops is where int8 loses the signal.  For ``--explain``.
    """
    float_model = _load_proto(float_path)
    int8_model = _load_proto(int8_path)
    consumers: dict[str, list] = {}
    for node in float_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    activations = {}
    for node in float_model.graph.node:
        if node.op_type != "Conv":
            continue
        out = node.output[0]
        following = consumers.get(out, [])
        if len(following) == 1 and following[0].op_type == "Relu":
            out = following[0].output[0]
        activations[node.name] = out
    int8_tensors = {t for n in int8_model.graph.node for t in n.output}
    pairs = {layer: (tensor, f"{tensor}_DequantizeLinear_Output") for layer, tensor in activations.items()
             if f"{tensor}_DequantizeLinear_Output" in int8_tensors}

    def run(model, names):
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
        session = ort.InferenceSession(model.SerializeToString(), session_options(num_threads),
                                       providers=["CPUExecutionProvider"])
        spec = spec_from_metadata({p.key: p.value for p in model.metadata_props})
        batch = session.get_inputs()[0].shape[0]
        step = batch if isinstance(batch, int) else 16
        results = {n: [] for n in names}
        for start in range(0, len(pixels), step):
            values = session.run(names, {INPUT_NAME: normalize(pixels[start:start + step], spec)})
            for name, value in zip(names, values, strict=True):
                results[name].append(value.astype(np.float64))
        return {n: np.concatenate(v) for n, v in results.items()}

    reference = run(float_model, [f for f, _ in pairs.values()])
    quantized = run(int8_model, [q for _, q in pairs.values()])
    return {layer: sqnr_db(reference[float_name], quantized[int8_name])
            for layer, (float_name, int8_name) in pairs.items()}
