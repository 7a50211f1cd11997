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
dtype: an fp16 output is rounded to float16 (by bit arithmetic, equal to numpy's cast) and
widened back, the value every consumer upcast to anyway, so no op pays a float16 round trip on
its inputs and constants are widened once at load; the declared dtype is restored on the
program's outputs.  A per-tensor ``dequantize`` of 8-bit integers is a 256-entry table of its
own results.  A program written for batch 1 runs a batch of N images in one pass when every op
is per image (checked at load): each op handles the N images at once, and the matrix products
(convolution, linear) are still one BLAS call per image of the batch-1 shape, so every image's
result is bit for bit its batch-1 result.  A tensor is freed after its last use.

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


HIDDEN_FROM_COREMLTOOLS = ("tensorflow", "executorch", "torchao", "sklearn")  # frontends spnas never uses


def import_coremltools():
    """Import coremltools without the frontends of other frameworks and its Linux-only "no runtime" log noise.

    coremltools imports TensorFlow (~10 s), ExecuTorch's ``exir``, torchao and scikit-learn
    (~10 s together) when they are installed, only for converters we never use; each is hidden
    during that one import if nobody has imported it yet, so a later ``import tensorflow`` (the
    TFLite exporter) or ``import executorch`` (the ExecuTorch exporter) still works.
    """
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    hidden = [name for name in HIDDEN_FROM_COREMLTOOLS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        import coremltools
    finally:
        for name in hidden:
            del sys.modules[name]
        ct_logger.setLevel(level)
    return coremltools


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


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int | None) -> np.ndarray:
    """``(q - zero_point) * scale``; subtracting a zero point of 0 changes no float, so it is skipped."""
    if zero_point is None or not np.any(zero_point):
        return _to_f32(q) * _along_axis(scale, q.ndim, axis)
    out = _to_f32(q) - _along_axis(zero_point, q.ndim, axis)
    out *= _along_axis(scale, q.ndim, axis)
    return out


def op_constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    return _dequantize(quantized_data, scale, zero_point, axis)


def op_quantize(input, scale, output_dtype, zero_point=None, axis=None):  # MIL parameter names
    """The clipped integers, as float32: the declared output dtype stores them."""
    dtype = {"int8": np.int8, "uint8": np.uint8}.get(str(output_dtype))
    if dtype is None:
        raise SpnasError(f"MIL quantize to {output_dtype!r} is not supported by spnas.mil_eval")
    q = _to_f32(input) / _along_axis(scale, input.ndim, axis)
    np.rint(q, out=q)
    if zero_point is not None:
        q += _along_axis(zero_point, input.ndim, axis)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max, out=q)


def op_dequantize(input, scale, zero_point=None, axis=None):
    return _dequantize(input, scale, zero_point, axis)


def op_cast(x, dtype):
    if str(dtype) not in CAST_DTYPES:
        raise SpnasError(f"MIL cast to {dtype!r} is not supported by spnas.mil_eval")
    return x  # the declared output dtype does the rounding


def op_relu(x):
    return np.maximum(x, x.dtype.type(0))  # exact in any dtype, so no float32 round trip


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


def op_conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    """2-D NCHW convolution: im2col + one matmul per image for groups == 1, shifted multiply-adds for depthwise."""
    if x.ndim != 4:
        raise SpnasError(f"MIL conv of rank {x.ndim} is not supported by spnas.mil_eval (only 2-D)")
    x, weight = _to_f32(x), _to_f32(weight)
    stride_h, stride_w = (1, 1) if strides is None else (int(s) for s in strides)
    dilation_h, dilation_w = (1, 1) if dilations is None else (int(d) for d in dilations)
    if str(pad_type) == "custom":
        top, bottom, left, right = (int(p) for p in pad)
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    elif str(pad_type) != "valid":
        raise SpnasError(f"MIL conv pad_type {pad_type!r} is not supported by spnas.mil_eval")
    batch, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    out_h = (height - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width - dilation_w * (kernel_w - 1) - 1) // stride_w + 1

    def tap(i: int, j: int) -> np.ndarray:
        top, left = i * dilation_h, j * dilation_w
        return x[:, :, top:top + stride_h * (out_h - 1) + 1:stride_h, left:left + stride_w * (out_w - 1) + 1:stride_w]

    taps = [(i, j) for i in range(kernel_h) for j in range(kernel_w)]
    groups = int(groups)
    if groups == 1:  # one BLAS product per image (numpy's matmul loops over the stacked images)
        if len(taps) == 1 and stride_h == stride_w == 1:
            flat = x.reshape(batch, channels, out_h * out_w)
        else:
            columns = np.stack([tap(i, j) for i, j in taps], axis=2)  # N, C, K, H', W'
            flat = columns.reshape(batch, channels * len(taps), out_h * out_w)
        out = (weight.reshape(out_channels, -1) @ flat).reshape(batch, out_channels, out_h, out_w)
    elif groups == channels == out_channels and group_channels == 1:  # image by image: twice as fast (cache)
        out = np.zeros((batch, out_channels, out_h, out_w), np.float32)
        term = np.empty_like(out[0])
        shifted = [(weight[:, 0, i, j].reshape(-1, 1, 1), tap(i, j)) for i, j in taps]
        for image in range(batch):
            for tap_weight, view in shifted:
                np.multiply(tap_weight, view[image], out=term)
                out[image] += term
    else:
        raise SpnasError(f"MIL conv with groups={groups} ({channels} -> {out_channels} channels) is not supported "
                         "by spnas.mil_eval (only groups=1 and depthwise)")
    if bias is not None:
        out += _to_f32(bias).reshape(1, -1, 1, 1)
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
    """``x.astype(float16).astype(float32)`` bit for bit, in place, at twice its speed: round-to-nearest-even of the
    float32 bits to float16's 10 mantissa bits; values outside float16's normal range [2**-14, 65520) (zeros,
    subnormals, overflow, inf, nan) take numpy's own cast."""
    bits = x.reshape(-1).view(np.int32)  # a view: x is contiguous
    scratch = bits & 0x7FFFFFFF
    scratch -= 0x38800000  # 2**-14
    outside = np.flatnonzero(scratch.view(np.uint32) >= 0x0EFFF000)  # 65520 - 2**-14, as float32 bits
    kept = x.flat[outside].copy()
    np.right_shift(bits, 13, out=scratch)
    scratch &= 1
    scratch += 0xFFF
    bits += scratch
    bits &= ~0x1FFF
    x.flat[outside] = kept.astype(np.float16).astype(np.float32)
    return x


# Ops whose output values are input values (or views of them): no rounding when the dtype stays.
VALUE_PRESERVING = ("relu", "reshape", "cast")
# Ops whose every image is computed from that image alone, given the axis they work along.
PER_IMAGE_AXES = {"reduce_mean": "axes", "softmax": "axis", "quantize": "axis", "dequantize": "axis"}


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

    def _execute(self, op: Op, kernel, env: dict, batch: int | None = None) -> None:
        """Run one op; ``batch``: N images in a program declared at batch 1 (shapes' leading 1 read as N)."""
        def resolve(binding):
            kind, content = binding
            return env[content] if kind == "name" else content

        if any(len(bindings) != 1 for bindings in op.inputs.values()):
            raise SpnasError(f"{self.package}: MIL op {op.type} {op.name!r} has variadic inputs, not supported by "
                             "spnas.mil_eval")
        arguments = {parameter: resolve(bindings[0]) for parameter, bindings in op.inputs.items()}
        if id(op) in self.tables:
            env[op.outputs[0][0]] = self.tables[id(op)][arguments["input"].view(np.uint8)]
            return
        if batch is not None and op.type == "reshape":
            arguments["shape"] = (batch, *arguments["shape"][1:])
        try:
            result = kernel(**arguments)
        except TypeError as exc:  # an input the kernel does not know
            raise SpnasError(f"{self.package}: MIL op {op.type} {op.name!r}: unsupported inputs ({exc})") from exc
        if op.type == "classify":  # a class name and a dict, not tensors
            for (output_name, _), value in zip(op.outputs, result, strict=True):
                env[output_name] = value
            return
        (output_name, output_type), = op.outputs
        if op.type in VALUE_PRESERVING and all(self._dtype_of(bindings[0]) is output_type.dtype
                                               for bindings in op.inputs.values() if bindings[0][0] == "name"):
            result = np.asarray(result)  # already held as its declared dtype
        else:
            result = _held(result, output_type.dtype, owned=op.type not in VALUE_PRESERVING)
        expected = output_type.shape if batch is None else (batch, *output_type.shape[1:])
        if not _shape_matches(expected, result.shape):
            raise SpnasError(f"{self.package}: MIL op {op.type} {op.name!r} gave shape {result.shape}, program "
                             f"declares {expected}")
        env[output_name] = result

    def _schedule(self, outputs: tuple[str, ...]) -> list[tuple[Op, list[str]]]:
        """The ops ``outputs`` need, in program order, each with the tensors that die after it."""
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
        return list(zip(needed, dying, strict=True))

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Evaluate the program (only what ``outputs`` need, default all); inputs are cast to their declared dtype
        like Core ML does.  A program declared at batch 1 also takes N images at once when every op is per image."""
        outputs = tuple(self.outputs if outputs is None else outputs)
        env = dict(self.held_constants)
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
            env[name] = _held(value.astype(tensor_type.dtype, copy=False), tensor_type.dtype)
        schedule = self._schedule(outputs)
        if batch is not None and any(op.type == "classify" for op, _ in schedule):
            raise SpnasError(f"{self.package}: the classifier outputs take one image at a time")
        with single_threaded_blas():
            for op, dying in schedule:
                self._execute(op, KERNELS[op.type], env, batch)
                for name in dying:
                    del env[name]
        return {name: self._declared_value(name, env[name]) for name in outputs}

    def run_passes(self, input_name: str, passes: list[np.ndarray], output: str) -> list[np.ndarray]:
        """``output`` of each pass's images, the passes side by side, one per core (numpy releases the GIL), under
        one BLAS limit taken here: a limit taken in each worker would be ignored (see ``single_threaded_blas``)."""
        from concurrent.futures import ThreadPoolExecutor

        with single_threaded_blas(), ThreadPoolExecutor(max(1, min(len(passes), os.cpu_count() or 1))) as pool:
            return list(pool.map(lambda images: self.run({input_name: images}, [output])[output], passes))

    def _declared_value(self, name: str, value):
        dtype = self.declared[name].dtype if name in self.declared else None
        return value.astype(dtype) if isinstance(value, np.ndarray) and dtype not in (None, list, dict, str) else value
