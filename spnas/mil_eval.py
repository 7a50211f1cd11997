"""Reference evaluator of the MIL program inside a saved ``.mlpackage``, in numpy.

coremltools converts on Linux but only runs a model on macOS, so without this a CoreML
artifact built here would ship unchecked.  We read what is on disk, the spec protobuf
(``Data/com.apple.CoreML/model.mlmodel``) and the weight blob (``weights/weight.bin``),
and execute the program op by op.  A corrupted weight, a wrong quantization scale or a
conversion bug therefore shows up in parity.

**Semantics (fp16 included).**  Every op upcasts its float inputs to float32, computes in
float32 (convolution, linear and mean accumulate in float32) and rounds its result once,
to the dtype the program declares for that op's output, with numpy's round-to-nearest-even
cast; ``relu`` and ``reshape`` are exact and run in their input dtype.  An fp16 program
thus stores every intermediate tensor in float16 exactly as written, while arithmetic
inside one op is float32.  ``quantize`` is ``clip(rint(x / scale) + zero_point)`` (ties
to even, like coremltools' own value inference); ``dequantize`` and
``constexpr_affine_dequantize`` are ``(q - zero_point) * scale``.  This proves the
program's semantics as written; it does not reproduce the numerics of Apple's runtime on
the Neural Engine, GPU or CPU (which may accumulate in float16 or fuse ops).

**Speed without new numerics.**  Float tensors are held in float32 whatever their declared
dtype: an fp16 output is rounded to float16 (by float32 arithmetic equal to numpy's cast) and
widened back, the value every consumer upcast to anyway, so no op pays a float16 round trip on
its inputs and constants are widened once at load; the declared dtype is restored on the
program's outputs.  A per-tensor ``dequantize`` of 8-bit integers is a 256-entry table of its
own results; when its arithmetic gives that table on all 256 integers, the integers of the
``quantize`` feeding it stay float32 and it computes instead of looking up.  The ops a set of
outputs needs are bound to their constants once (a schedule); an op may write its result over
an input that dies with it.  A program written for batch 1 takes a batch of N images when every
op is per image (checked at load) and runs them one after the other, each exactly as alone, so
its tensors stay in the CPU caches.  Convolutions with groups 1 are one BLAS product per image
(im2col for kernels over 1x1); depthwise ones are shifted multiply-adds over whole channel
planes, in the order a loop over output pixels would add them.  A tensor is freed after its
last use.

**Coverage.**  Exactly the ops spnas' graphs contain: ``const``,
``constexpr_affine_dequantize``, ``cast``, ``conv`` (groups 1 or depthwise; custom or
valid padding), ``relu``, ``add``, ``sub`` and ``mul`` (these two from the image-input
normalisation), ``reduce_mean``, ``reshape``, ``linear``, ``quantize``, ``dequantize``, and the
classifier's ``softmax`` and ``classify`` (``ct.ClassifierConfig``: the top class name, and a
dict of class name -> probability in float64, as Core ML returns them).
An unknown op fails, by name, when the package is opened; an unsupported dtype or op
option fails, by name, when it is met.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.frameworks import import_hiding

MODEL_FILE = Path("Data/com.apple.CoreML/model.mlmodel")
BLOB_SENTINEL = 0xDEADBEEF
# MILBlob BlobDataType codes (mlmodel/src/MILBlob/Blob/BlobDataType.hpp).
BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8, 6: np.int16, 7: np.uint16, 14: np.int32,
               15: np.uint32}
# MIL proto DataType names -> numpy dtypes.
PROTO_DTYPES = {"BOOL": np.bool_, "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64,
                "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8,
                "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64}
CAST_DTYPES = {"fp16": np.float16, "fp32": np.float32}
QUANTIZED_RANGES = {"int8": (np.float32(-128), np.float32(127)), "uint8": (np.float32(0), np.float32(255))}


HIDDEN_FROM_COREMLTOOLS = ("tensorflow", "executorch", "torchao", "sklearn")  # frontends spnas never uses


def import_coremltools():
    """Import coremltools without the frontends of other frameworks and its Linux-only "no runtime" log noise.

    coremltools imports TensorFlow, ExecuTorch's ``exir``, torchao and scikit-learn when they are installed,
    only for converters we never use (``spnas.frameworks``): a later ``import tensorflow`` (the TFLite
    exporter) or ``import executorch`` (the ExecuTorch exporter) still works.
    """
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    try:
        return import_hiding("coremltools", HIDDEN_FROM_COREMLTOOLS)
    finally:
        ct_logger.setLevel(level)


def single_threaded_blas():
    """One BLAS thread for an evaluation, taken by the thread that starts it.

    Batch-1 matmuls are small: BLAS threads cost more than they give (0.6 s vs 0.14 s per image on 2 busy cores).
    And OpenBLAS's results depend on its thread count (up to 0.11 in an int8 program's logits), so the limit must
    hold for the whole evaluation. threadpoolctl lets only one thread at a time set OpenBLAS's process-wide limit
    and ignores the others, so passes run side by side (``MilProgram.run_passes``) take it once, in the caller.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an optional speed-up (spnas[coreml] installs it)
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def read_spec(package: str | Path):
    """The ``Model`` protobuf of a saved ``.mlpackage``."""
    import_coremltools()
    from coremltools.proto import Model_pb2

    model_file = Path(package) / MODEL_FILE
    if not model_file.is_file():
        raise SpnasError(f"{package}: not an .mlpackage (no {MODEL_FILE})")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(model_file.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError type
        raise SpnasError(f"{package}: unreadable model spec ({exc})") from exc
    return spec


def user_metadata(package: str | Path) -> dict[str, str]:
    return dict(read_spec(package).description.metadata.userDefined)


@dataclass
class TensorType:
    dtype: type
    shape: tuple[int | None, ...]  # None: a dimension the program leaves unknown


@dataclass
class Op:
    type: str
    name: str
    inputs: dict[str, list]  # parameter -> [("name", str) | ("value", np.ndarray | str)]
    outputs: list[tuple[str, TensorType]]


class BlobFile:
    """Random access to a MIL weight blob file, checking each blob's header."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise SpnasError(f"weight file {path} is missing")
        self.path = path
        self.data = np.fromfile(path, dtype=np.uint8)

    def read(self, offset: int, tensor_type: TensorType) -> np.ndarray:
        if offset + 24 > self.data.size:
            raise SpnasError(f"{self.path}: blob offset {offset} is past the end of the file")
        sentinel, code, size, data_offset = struct.unpack_from("<IIQQ", self.data, offset)
        if sentinel != BLOB_SENTINEL:
            raise SpnasError(f"{self.path}: corrupt blob header at offset {offset} (sentinel {sentinel:#x})")
        if BLOB_DTYPES.get(code) != tensor_type.dtype:
            raise SpnasError(f"{self.path}: blob at {offset} has storage type {code}, program expects "
                             f"{np.dtype(tensor_type.dtype).name}")
        count = int(np.prod(tensor_type.shape, dtype=np.int64))
        if size != count * np.dtype(tensor_type.dtype).itemsize or data_offset + size > self.data.size:
            raise SpnasError(f"{self.path}: blob at {offset} holds {size} bytes, program expects {count} values")
        raw = self.data[data_offset:data_offset + size]
        return raw.view(tensor_type.dtype).reshape(tensor_type.shape)


def _shape_matches(declared: tuple[int | None, ...], actual: tuple[int, ...]) -> bool:
    return len(declared) == len(actual) and all(d is None or d == a for d, a in zip(declared, actual, strict=True))


def _to_f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False)


def _along_axis(values: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """A scalar or per-axis vector of quantization parameters, broadcastable to a rank-``rank`` tensor."""
    values = _to_f32(np.asarray(values))
    if values.ndim == 0:
        return values
    shape = [1] * rank
    shape[int(axis) % rank] = values.size
    return values.reshape(shape)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int | None,
                out: np.ndarray | None = None) -> np.ndarray:
    """``(q - zero_point) * scale``; subtracting a zero point of 0 changes no float, so it is skipped."""
    if zero_point is None or not np.any(zero_point):
        return np.multiply(_to_f32(q), _along_axis(scale, q.ndim, axis), out=out)
    out = np.subtract(_to_f32(q), _along_axis(zero_point, q.ndim, axis), out=out)
    out *= _along_axis(scale, q.ndim, axis)
    return out


def op_constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    return _dequantize(quantized_data, scale, zero_point, axis)


_FILLED: dict[tuple, np.ndarray] = {}


def _filled(value: np.generic, like: np.ndarray) -> np.ndarray:
    """A read-only array of ``like``'s shape holding ``value``: numpy 2's maximum and minimum against a scalar take
    3x their time against an array (0.21 vs 0.06 ms per 400,000 float32 values on an AMD EPYC with AVX-512).  One
    buffer per value, grown to the largest tensor asked for."""
    key = (value.dtype, value.item())
    buffer = _FILLED.get(key)
    if buffer is None or buffer.size < like.size:
        buffer = np.full(like.size, value)
        buffer.flags.writeable = False
        _FILLED[key] = buffer
    return buffer[:like.size].reshape(like.shape)


def op_quantize(input, scale, output_dtype, zero_point=None, axis=None, out=None):  # MIL parameter names
    """The clipped integers, as float32: the declared output dtype stores them.  ``out``: reuse a dying input."""
    limits = QUANTIZED_RANGES.get(str(output_dtype))
    if limits is None:
        raise SpnasError(f"MIL quantize to {output_dtype!r} is not supported by spnas.mil_eval")
    q = np.divide(_to_f32(input), _along_axis(scale, input.ndim, axis), out=out)
    np.rint(q, out=q)
    if zero_point is not None:
        q += _along_axis(zero_point, input.ndim, axis)
    np.maximum(q, _filled(limits[0], q), out=q)  # numpy.clip's values, in 2/3 of its time
    return np.minimum(q, _filled(limits[1], q), out=q)


def op_dequantize(input, scale, zero_point=None, axis=None, out=None):
    return _dequantize(input, scale, zero_point, axis, out)


def op_cast(x, dtype):
    if str(dtype) not in CAST_DTYPES:
        raise SpnasError(f"MIL cast to {dtype!r} is not supported by spnas.mil_eval")
    return x  # the declared output dtype does the rounding


def op_relu(x, out=None):
    return np.maximum(x, _filled(x.dtype.type(0), x), out=out)  # exact in any dtype, so no float32 round trip


def op_add(x, y):
    return _to_f32(x) + _to_f32(y)


def op_sub(x, y):
    return _to_f32(x) - _to_f32(y)


def op_mul(x, y):
    return _to_f32(x) * _to_f32(y)


def op_reduce_mean(x, axes=None, keep_dims=False):
    axes = None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))
    return np.mean(_to_f32(x), axis=axes, keepdims=bool(keep_dims), dtype=np.float32)


def op_reshape(x, shape):
    return x.reshape(tuple(int(s) for s in shape))


def op_linear(x, weight, bias=None):
    """One matrix product per row, as at batch 1 (BLAS may sum a many-row product in another order)."""
    weight_t = _to_f32(weight).T
    rows = _to_f32(x).reshape(-1, 1, x.shape[-1])
    out = np.concatenate([row @ weight_t for row in rows]).reshape(*x.shape[:-1], weight_t.shape[1])
    if bias is not None:
        out += _to_f32(bias)
    return out


def op_softmax(x, axis):
    x = _to_f32(x)
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


def op_classify(probabilities, classes):
    """(top class, {class: probability}) of a batch-1 probability tensor, Core ML's classifier outputs."""
    scores = np.asarray(probabilities, np.float64).reshape(-1)
    if len(classes) != scores.size:
        raise SpnasError(f"MIL classify: {len(classes)} classes for {scores.size} probabilities")
    return classes[int(np.argmax(scores))], dict(zip(classes, scores.tolist(), strict=True))


def _padded(x: np.ndarray, top: int, bottom: int, left: int, right: int, rows: int, columns: int) -> np.ndarray:
    """``x`` zero-padded on its last two axes to at least ``rows`` x ``columns`` (numpy.pad costs 5x the copy)."""
    batch, channels, height, width = x.shape
    out = np.zeros((batch, channels, max(rows, top + height + bottom), max(columns, left + width + right)), x.dtype)
    out[:, :, top:top + height, left:left + width] = x
    return out


def _depthwise(x, weight, pads, stride_h, stride_w, dilation_h, dilation_w, out_h, out_w) -> np.ndarray:
    """Depthwise convolution as shifted multiply-adds, each over one image's whole channel planes.

    Each padded image is split into its ``stride_h x stride_w`` phase planes, so every tap of the kernel reads a
    plane at a fixed offset with stride 1; flattening a plane's rows, the tap is one contiguous slice of ``out_h``
    full plane rows per channel (the columns past ``out_w`` are computed and dropped).  Every output value is still
    ``((0 + w0*x0) + w1*x1) + ...`` in float32, taps in row-major order, as a loop over output pixels would give.
    """
    top, bottom, left, right = pads
    batch, channels, height, width = x.shape
    _, _, kernel_h, kernel_w = weight.shape
    row = -(-(width + left + right) // stride_w)  # the phase planes' width
    if stride_h == stride_w == 1 and 2 * (row - out_w) > out_w:  # small planes: mostly dropped columns
        return _depthwise_channels_last(_padded(x, top, bottom, left, right, 0, 0), weight, dilation_h, dilation_w,
                                        out_h, out_w)
    taps = []
    for i in range(kernel_h):
        for j in range(kernel_w):
            phase = (i * dilation_h % stride_h, j * dilation_w % stride_w)
            offset = (i * dilation_h // stride_h) * row + j * dilation_w // stride_w
            taps.append((weight[:, 0, i, j].reshape(-1, 1), phase, offset))
    length = out_h * row
    plane_rows = max(-(-(height + top + bottom) // stride_h), -(-(max(offset for *_, offset in taps) + length) // row))
    padded = _padded(x, top, bottom, left, right, plane_rows * stride_h, row * stride_w)
    out = np.zeros((batch, channels, length), np.float32)
    term = np.empty((channels, length), np.float32)
    for image in range(batch):
        if stride_h == stride_w == 1:
            planes = padded[image].reshape(1, 1, channels, -1)
        else:  # (phase row, phase column, channel, plane pixel), in one copy
            planes = np.ascontiguousarray(padded[image].reshape(channels, plane_rows, stride_h, row, stride_w)
                                          .transpose(2, 4, 0, 1, 3)).reshape(stride_h, stride_w, channels, -1)
        total = out[image]
        for tap_weight, (phase_h, phase_w), offset in taps:
            np.multiply(tap_weight, planes[phase_h, phase_w, :, offset:offset + length], out=term)
            total += term
    return out.reshape(batch, channels, out_h, row)[:, :, :, :out_w]


def _depthwise_channels_last(padded, weight, dilation_h, dilation_w, out_h, out_w) -> np.ndarray:
    """Stride-1 depthwise convolution of small planes image by image in (row, column, channel) order, where a tap's
    rows are runs of whole pixels' channels: the same multiply-adds in the same order as ``_depthwise``."""
    batch, channels, _, _ = padded.shape
    _, _, kernel_h, kernel_w = weight.shape
    out = np.empty((batch, channels, out_h, out_w), np.float32)
    total = np.empty((out_h, out_w, channels), np.float32)
    term = np.empty_like(total)
    taps = [(np.ascontiguousarray(weight[:, 0, i, j]), i * dilation_h, j * dilation_w)
            for i in range(kernel_h) for j in range(kernel_w)]
    for image in range(batch):
        pixels = np.ascontiguousarray(padded[image].transpose(1, 2, 0))
        total.fill(0)
        for tap_weight, top, left in taps:
            np.multiply(tap_weight, pixels[top:top + out_h, left:left + out_w], out=term)
            total += term
        out[image] = total.transpose(2, 0, 1)
    return out


def op_conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    """2-D NCHW convolution: im2col + one matmul per image for groups == 1, shifted multiply-adds for depthwise."""
    if x.ndim != 4:
        raise SpnasError(f"MIL conv of rank {x.ndim} is not supported by spnas.mil_eval (only 2-D)")
    x, weight = _to_f32(x), _to_f32(weight)
    stride_h, stride_w = (1, 1) if strides is None else (int(s) for s in strides)
    dilation_h, dilation_w = (1, 1) if dilations is None else (int(d) for d in dilations)
    if str(pad_type) == "custom":
        top, bottom, left, right = (int(p) for p in pad)
    elif str(pad_type) == "valid":
        top = bottom = left = right = 0
    else:
        raise SpnasError(f"MIL conv pad_type {pad_type!r} is not supported by spnas.mil_eval")
    batch, channels, height, width = x.shape
    height, width = height + top + bottom, width + left + right
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    out_h = (height - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    groups = int(groups)
    if groups == 1:  # one BLAS product per image (numpy's matmul loops over the stacked images)
        if top or bottom or left or right:
            x = _padded(x, top, bottom, left, right, 0, 0)

        def tap(i: int, j: int) -> np.ndarray:
            top, left = i * dilation_h, j * dilation_w
            return x[:, :, top:top + stride_h * (out_h - 1) + 1:stride_h,
                     left:left + stride_w * (out_w - 1) + 1:stride_w]

        taps = [(i, j) for i in range(kernel_h) for j in range(kernel_w)]
        if len(taps) == 1 and stride_h == stride_w == 1:
            flat = x.reshape(batch, channels, out_h * out_w)
        else:
            columns = np.stack([tap(i, j) for i, j in taps], axis=2)  # N, C, K, H', W'
            flat = columns.reshape(batch, channels * len(taps), out_h * out_w)
        out = (weight.reshape(out_channels, -1) @ flat).reshape(batch, out_channels, out_h, out_w)
    elif groups == channels == out_channels and group_channels == 1:
        out = _depthwise(x, weight, (top, bottom, left, right), stride_h, stride_w, dilation_h, dilation_w, out_h,
                         out_w)
    else:
        raise SpnasError(f"MIL conv with groups={groups} ({channels} -> {out_channels} channels) is not supported "
                         "by spnas.mil_eval (only groups=1 and depthwise)")
    if bias is not None:  # the products are fresh arrays; the depthwise one is a view of wider rows
        bias = _to_f32(bias).reshape(1, -1, 1, 1)
        out = np.add(out, bias, out=out if groups == 1 else None)
    return out


KERNELS = {
    "cast": op_cast, "conv": op_conv, "relu": op_relu, "add": op_add, "sub": op_sub, "mul": op_mul,
    "reduce_mean": op_reduce_mean, "reshape": op_reshape, "linear": op_linear, "quantize": op_quantize,
    "dequantize": op_dequantize, "softmax": op_softmax, "classify": op_classify,
}
CONSTEXPR_KERNELS = {"constexpr_affine_dequantize": op_constexpr_affine_dequantize}


def _held(value, dtype, owned: bool = False):
    """An op's result as held between ops: float32 carrying the value of the declared ``dtype`` (module docstring).
    ``owned``: the result is a fresh array nothing else refers to, so float16 rounding may happen in place."""
    if dtype is np.float16:
        value = np.asarray(value, np.float32)
        return _round_to_float16(value if owned and value.flags.c_contiguous else value.copy())
    if dtype is np.float32:
        return np.asarray(value, np.float32)
    return np.asarray(value).astype(dtype, copy=False)


def _round_to_float16(x: np.ndarray) -> np.ndarray:
    """``x.astype(float16).astype(float32)`` bit for bit, in place, at 3x its speed.  In float16's normal range
    [2**-14, 65520) this is Veltkamp's split ``c - (c - x)``, ``c = x * (2**13 + 1)``: float32 arithmetic rounding to
    nearest-even leaves ``x`` rounded to 24 - 13 = 11 significant bits, float16's, ties to even (checked against
    numpy's cast on every tie pattern class by the tests); other values (zeros, subnormals, overflow, inf, nan) take
    numpy's own cast."""
    flat = x.reshape(-1)  # a view: x is contiguous
    scratch = flat.view(np.int32) & 0x7FFFFFFF
    scratch -= 0x38800000  # 2**-14
    outside = np.flatnonzero(scratch.view(np.uint32) >= 0x0EFFF000)  # 65520 - 2**-14, as float32 bits
    kept = flat[outside]
    with np.errstate(over="ignore", invalid="ignore"):  # only outside values overflow; they are replaced
        _split_to_float16(flat, scratch.view(np.float32))
        flat[outside] = kept.astype(np.float16).astype(np.float32)
    return x


def _split_to_float16(x: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """Veltkamp's split of ``x`` in place: float16 rounding of values that are zeros or in its normal range."""
    split = np.multiply(x, np.float32(8193), out=scratch)
    np.subtract(split, x, out=x)
    return np.subtract(split, x, out=x)


# Ops whose output values are input values (or views of them): no rounding when the dtype stays.
VALUE_PRESERVING = ("relu", "reshape", "cast")
# Ops whose result is a new float32 array nothing else refers to, and ops that may write theirs over such a dying input.
FRESH_RESULTS = ("conv", "relu", "add", "sub", "mul", "quantize", "dequantize")
REUSABLE_INPUT = {"relu": "x", "quantize": "input", "dequantize": "input"}
# Ops whose every image is computed from that image alone, given the axis they work along.
PER_IMAGE_AXES = {"reduce_mean": "axes", "softmax": "axis", "quantize": "axis", "dequantize": "axis"}


class _Step:
    """One op of a schedule, its constant inputs bound once: running it costs the kernel and little else."""

    def __init__(self, program: MilProgram, op: Op, kernel, constants: dict, dying: tuple[str, ...]):
        if any(len(bindings) != 1 for bindings in op.inputs.values()):
            raise SpnasError(f"{program.package}: MIL op {op.type} {op.name!r} has variadic inputs, not supported by "
                             "spnas.mil_eval")
        self.op, self.kernel, self.dying, self.package = op, kernel, dying, program.package
        self.fixed, self.names = {}, []
        for parameter, ((kind, content),) in op.inputs.items():
            if kind == "value":
                self.fixed[parameter] = content
            elif content in constants:
                self.fixed[parameter] = constants[content]
            else:
                self.names.append((parameter, content))
        self.table = program.tables.get(id(op))
        (self.output, self.output_type), *_ = op.outputs
        self.integers_as_floats = self.output in program.float_quantized  # a quantize whose integers stay float32
        self.reuse = None  # the input parameter whose dying array the result may overwrite (set by the schedule)
        self.keep = op.type in VALUE_PRESERVING and all(
            program._dtype_of(bindings[0]) is self.output_type.dtype
            for bindings in op.inputs.values() if bindings[0][0] == "name")

    def run(self, env: dict) -> None:
        op = self.op
        arguments = dict(self.fixed)
        for parameter, name in self.names:
            arguments[parameter] = env[name]
        for name in self.dying:
            del env[name]
        if self.reuse is not None:
            arguments["out"] = arguments[self.reuse]
        if self.table is not None:
            quantized = arguments["input"]
            if quantized.dtype == np.float32:  # integers of a quantize held as floats: the table's own arithmetic
                env[self.output] = _split_to_float16(op_dequantize(**arguments))
            else:
                env[self.output] = np.take(self.table, quantized.view(np.uint8))  # 3x faster than indexing
            return
        try:
            result = self.kernel(**arguments)
        except TypeError as exc:  # an input the kernel does not know
            raise SpnasError(f"{self.package}: MIL op {op.type} {op.name!r}: unsupported inputs ({exc})") from exc
        if op.type == "classify":  # a class name and a dict, not tensors
            for (output_name, _), value in zip(op.outputs, result, strict=True):
                env[output_name] = value
            return
        if self.keep or self.integers_as_floats:
            result = np.asarray(result)  # already held as its declared dtype, or as float32 integers
        else:
            result = _held(result, self.output_type.dtype, owned=op.type not in VALUE_PRESERVING)
        if not _shape_matches(self.output_type.shape, result.shape):
            raise SpnasError(f"{self.package}: MIL op {op.type} {op.name!r} gave shape {result.shape}, program "
                             f"declares {self.output_type.shape}")
        env[self.output] = result


class MilProgram:
    """The ``main`` function of a saved mlprogram, ready to run on numpy inputs.

    Constants and ``constexpr_*`` weights are decoded once when the package is opened.
    """

    def __init__(self, package: str | Path):
        self.package = Path(package)
        self.spec = read_spec(package)
        if self.spec.WhichOneof("Type") != "mlProgram":
            raise SpnasError(f"{package}: not an ML program (model type {self.spec.WhichOneof('Type')!r})")
        functions = self.spec.mlProgram.functions
        if "main" not in functions:
            raise SpnasError(f"{package}: ML program has no 'main' function")
        function = functions["main"]
        block = function.block_specializations[function.opset]
        self.opset = function.opset
        self._blobs: dict[str, BlobFile] = {}
        self.inputs = {value.name: self._tensor_type(value.type) for value in function.inputs}
        self.outputs = list(block.outputs)
        ops = [self._parse(op) for op in block.operations]
        unknown = sorted({op.type for op in ops} - set(KERNELS) - set(CONSTEXPR_KERNELS) - {"const"})
        if unknown:
            raise SpnasError(f"{package}: MIL op(s) {', '.join(unknown)} not supported by spnas.mil_eval")
        self.op_counts = Counter(op.type for op in ops)
        self.declared = {name: tensor_type for op in ops for name, tensor_type in op.outputs}
        self.declared.update(self.inputs)
        self.tables: dict[int, np.ndarray] = {}
        self._schedules: dict[tuple[str, ...], list[_Step]] = {}
        self.float_quantized: set[str] = set()
        held: dict[str, np.ndarray] = {}  # constants as run() holds them (float16 widened, exactly)
        self.ops: list[Op] = []
        for op in ops:
            if op.type == "const":
                value = op.inputs["val"][0][1]
                is_half = isinstance(value, np.ndarray) and value.dtype == np.float16
                held[op.outputs[0][0]] = value.astype(np.float32) if is_half else value
            elif op.type in CONSTEXPR_KERNELS:
                self._execute(op, CONSTEXPR_KERNELS[op.type], held)
            else:
                self.ops.append(op)
        self.held_constants = held
        self.constants = {name: self._declared_value(name, value) for name, value in held.items()}  # as declared
        self.per_image = self._per_image()
        self.tables = {id(op): table for op in self.ops if (table := self._dequantize_table(op)) is not None}
        self.float_quantized = self._float_quantized()

    def _float_quantized(self) -> set[str]:
        """The quantize outputs read only by table dequantizes whose arithmetic, rounded by Veltkamp's split alone,
        gives the table on all 256 integers (so on any tensor): those integers stay float32, no cast and no
        lookup (the split is exact when no dequantized value is a float16 subnormal or overflows)."""
        readers: dict[str, list[Op]] = {}
        for op in self.ops:
            for bindings in op.inputs.values():
                for kind, content in bindings:
                    if kind == "name":
                        readers.setdefault(content, []).append(op)
        kept = set()
        for op in self.ops:
            name = op.outputs[0][0]
            if op.type != "quantize" or name in self.outputs or not readers.get(name):
                continue
            if all(reader.type == "dequantize" and id(reader) in self.tables and self._split_is_table(reader)
                   for reader in readers[name]):
                kept.add(name)
        return kept

    def _split_is_table(self, op: Op) -> bool:
        every = np.arange(256, dtype=np.uint8).view(self.declared[op.inputs["input"][0][1]].dtype)
        scale = self._constant(op.inputs["scale"][0])
        zero_point = self._constant(op.inputs["zero_point"][0]) if "zero_point" in op.inputs else None
        with np.errstate(over="ignore", invalid="ignore"):
            split = _split_to_float16(op_dequantize(every.astype(np.float32), scale, zero_point))
        return np.array_equal(split.view(np.int32), self.tables[id(op)].view(np.int32))

    def _dequantize_table(self, op: Op) -> np.ndarray | None:
        """A per-tensor dequantize of 8-bit integers as a 256-entry table, indexed by the integers' bytes: the op
        itself evaluated on every possible input, so looking values up gives exactly its results, in one pass."""
        if op.type != "dequantize" or op.inputs["input"][0][0] != "name" or "axis" in op.inputs:
            return None
        dtype = self.declared[op.inputs["input"][0][1]].dtype
        scale = self._constant(op.inputs["scale"][0])
        zero_point = self._constant(op.inputs["zero_point"][0]) if "zero_point" in op.inputs else None
        if dtype not in (np.int8, np.uint8) or scale is None or np.ndim(scale) or \
                ("zero_point" in op.inputs and (zero_point is None or np.ndim(zero_point))):
            return None
        every = np.arange(256, dtype=np.uint8).view(dtype)
        return _held(op_dequantize(every, scale, zero_point), op.outputs[0][1].dtype)

    def _per_image(self) -> bool:
        """Whether a batch of N images may run in one pass: every tensor is declared at batch 1 and no op works
        along axis 0 (a reduction, softmax or per-axis quantization there would mix the images)."""
        if any(not t.shape or t.shape[0] != 1 for t in self.inputs.values()):
            return False
        for op in self.ops:
            if op.type == "classify":  # batch 1 by nature: run() refuses it on a batch
                continue
            if any(not t.shape or t.shape[0] != 1 for _, t in op.outputs):
                return False
            parameter = PER_IMAGE_AXES.get(op.type)
            if parameter is None or (parameter not in op.inputs and op.type != "reduce_mean"):
                continue
            axes = self._constant(op.inputs[parameter][0]) if parameter in op.inputs else None
            if axes is None:
                return False  # all axes, or axes known only at run time
            data = self._constant(op.inputs["x" if "x" in op.inputs else "input"][0])
            rank = len(self.declared[op.inputs["x" if "x" in op.inputs else "input"][0][1]].shape
                       if data is None else np.shape(data))
            if any(int(a) % rank == 0 for a in np.atleast_1d(axes)):
                return False
        return True

    def _dtype_of(self, binding):
        kind, content = binding
        return self.declared[content].dtype if kind == "name" and content in self.declared else None

    def _constant(self, binding):
        """The value of an op input known before running (an immediate or a ``const``), else None."""
        kind, content = binding
        return content if kind == "value" else self.constants.get(content)

    def _tensor_type(self, value_type) -> TensorType:
        kind = value_type.WhichOneof("type")
        if kind in ("listType", "dictionaryType"):  # the classifier's class list and probability dict
            return TensorType(list if kind == "listType" else dict, ())
        if kind != "tensorType":
            raise SpnasError(f"{self.package}: MIL value of type {kind!r} is not supported by spnas.mil_eval")
        tensor = value_type.tensorType
        from coremltools.proto import MIL_pb2

        name = MIL_pb2.DataType.Name(tensor.dataType)
        if name not in PROTO_DTYPES and name != "STRING":
            raise SpnasError(f"{self.package}: MIL dtype {name} is not supported by spnas.mil_eval")
        shape = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None
                      for d in tensor.dimensions)
        return TensorType(PROTO_DTYPES.get(name, str), shape)

    def _value(self, value) -> np.ndarray | str:
        tensor_type = self._tensor_type(value.type)
        kind = value.WhichOneof("value")
        if tensor_type.dtype is list and kind == "immediateValue":
            return [self._value(item) for item in value.immediateValue.list.values]
        if kind == "blobFileValue":
            return self._blob(value.blobFileValue.fileName).read(value.blobFileValue.offset, tensor_type)
        if kind != "immediateValue":
            raise SpnasError(f"{self.package}: MIL value kind {kind!r} is not supported by spnas.mil_eval")
        tensor = value.immediateValue.tensor
        field = tensor.WhichOneof("value")
        if tensor_type.dtype is str:
            strings = list(tensor.strings.values)
            return strings[0] if not tensor_type.shape else np.array(strings)
        if field == "bytes":
            array = np.frombuffer(tensor.bytes.values, dtype=tensor_type.dtype)
        else:
            array = np.array(list(getattr(tensor, field).values), dtype=tensor_type.dtype)
        return array.reshape(tensor_type.shape)

    def _blob(self, file_name: str) -> BlobFile:
        if file_name not in self._blobs:
            prefix = "@model_path/"
            if not file_name.startswith(prefix):
                raise SpnasError(f"{self.package}: weight file reference {file_name!r} is outside the package")
            self._blobs[file_name] = BlobFile(self.package / MODEL_FILE.parent / file_name[len(prefix):])
        return self._blobs[file_name]

    def _parse(self, op) -> Op:
        outputs = [(value.name, self._tensor_type(value.type)) for value in op.outputs]
        inputs = {}
        for parameter, argument in op.inputs.items():
            inputs[parameter] = [("name", b.name) if b.WhichOneof("binding") == "name"
                                 else ("value", self._value(b.value)) for b in argument.arguments]
        for parameter, value in op.attributes.items():
            if parameter != "name":
                inputs[parameter] = [("value", self._value(value))]
        name = op.attributes["name"].immediateValue.tensor.strings.values[0] if "name" in op.attributes else ""
        return Op(op.type, name or outputs[0][0], inputs, outputs)

    def _execute(self, op: Op, kernel, env: dict) -> None:
        """Run one op on the tensors in ``env`` (the ``constexpr_*`` weights at load)."""
        _Step(self, op, kernel, env, ()).run(env)

    def _schedule(self, outputs: tuple[str, ...]) -> list[_Step]:
        """The ops ``outputs`` need, in program order, bound to their constants, each with the tensors that die
        after it; compiled once per output list."""
        if outputs in self._schedules:
            return self._schedules[outputs]
        needed, wanted = [], set(outputs)
        for op in reversed(self.ops):
            if wanted & {name for name, _ in op.outputs}:
                needed.append(op)
                wanted |= {content for bindings in op.inputs.values() for kind, content in bindings if kind == "name"}
        needed.reverse()
        last_use = {}
        for index, op in enumerate(needed):
            for bindings in op.inputs.values():
                for kind, content in bindings:
                    if kind == "name" and content not in self.constants:
                        last_use[content] = index
        dying = [[] for _ in needed]
        for name, index in last_use.items():
            if name not in outputs:
                dying[index].append(name)
        steps = [_Step(self, op, KERNELS[op.type], self.held_constants, tuple(names))
                 for op, names in zip(needed, dying, strict=True)]
        fresh = {step.output for step in steps if step.op.type in FRESH_RESULTS and
                 (step.output_type.dtype in (np.float16, np.float32) or step.integers_as_floats)}
        for step in steps:
            parameter = REUSABLE_INPUT.get(step.op.type)
            name = dict(step.names).get(parameter)
            if name in fresh and name in step.dying and (step.op.type != "dequantize" or step.table is not None):
                step.reuse = parameter
        self._schedules[outputs] = steps
        return steps

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Evaluate the program (only what ``outputs`` need, default all); inputs are cast to their declared dtype
        like Core ML does.  A program declared at batch 1 also takes N images at once when every op is per image:
        they run one after the other, each exactly as alone (and its tensors stay in the CPU caches)."""
        with single_threaded_blas():
            return self._evaluate(feeds, outputs)

    def _evaluate(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        """``run`` without the BLAS limit, which its caller holds."""
        outputs = tuple(self.outputs if outputs is None else outputs)
        held = {}
        batch = None
        for name, tensor_type in self.inputs.items():
            if name not in feeds:
                raise SpnasError(f"{self.package}: missing input {name!r}")
            value = np.asarray(feeds[name])
            if self.per_image and value.ndim == len(tensor_type.shape) and value.shape[0] != 1 and \
                    _shape_matches(tensor_type.shape[1:], value.shape[1:]):
                batch = value.shape[0]
            elif not _shape_matches(tensor_type.shape, value.shape):
                raise SpnasError(f"{self.package}: input {name!r} has shape {value.shape}, program expects "
                                 f"{tensor_type.shape}")
            held[name] = _held(value.astype(tensor_type.dtype, copy=False), tensor_type.dtype)
        schedule = self._schedule(outputs)
        if batch is not None and any(step.op.type == "classify" for step in schedule):
            raise SpnasError(f"{self.package}: the classifier outputs take one image at a time")
        images = [held] if batch is None else [{name: value[i:i + 1] for name, value in held.items()}
                                               for i in range(batch)]
        results = []
        for env in images:
            for step in schedule:
                step.run(env)
            results.append({name: env[name] if name in env else self.held_constants[name] for name in outputs})
        if batch is None:
            return {name: self._declared_value(name, value) for name, value in results[0].items()}
        return {name: self._declared_value(name, np.concatenate([result[name] for result in results]))
                for name in outputs}

    def run_passes(self, input_name: str, passes: list[np.ndarray], output: str) -> list[np.ndarray]:
        """``output`` of each pass's images, the passes side by side, one per core (numpy releases the GIL), under
        one BLAS limit taken here; the workers take none: threadpoolctl would ignore it (``single_threaded_blas``)."""
        from concurrent.futures import ThreadPoolExecutor

        with single_threaded_blas(), ThreadPoolExecutor(max(1, min(len(passes), os.cpu_count() or 1))) as pool:
            return list(pool.map(lambda images: self._evaluate({input_name: images}, [output])[output], passes))

    def _declared_value(self, name: str, value):
        dtype = self.declared[name].dtype if name in self.declared else None
        return value.astype(dtype) if isinstance(value, np.ndarray) and dtype not in (None, list, dict, str) else value
