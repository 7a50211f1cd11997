"""``.tflite`` artifacts in the LiteRT interpreter (XNNPACK, its default CPU delegate), fed as an app feeds
them: the format's runner and its metadata reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.export import RunnerBase, spec_from_metadata
from spnas.preprocess import PreprocessSpec, normalize

FORMAT = "tflite"


def read_metadata(content: bytes) -> dict[str, str]:
    """The ``spnas.*`` metadata entries of a TFLite model (what ``with_metadata`` wrote)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        name = model.Metadata(i).Name().decode()
        if name.startswith("spnas."):
            entries[name] = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes().decode()
    return entries


def open_interpreter(source, num_threads: int | None = 1):
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_content": source} if isinstance(source, bytes) else {"model_path": str(source)}
    try:
        interpreter = Interpreter(num_threads=num_threads, **kwargs)
    except ValueError as exc:
        raise SpnasError(f"{source if not isinstance(source, bytes) else 'model'}: not a loadable TFLite model "
                         f"({str(exc).splitlines()[0]})") from exc
    interpreter.allocate_tensors()
    return interpreter


def prepare_input(pixels: np.ndarray, input_detail: dict, spec: PreprocessSpec) -> np.ndarray:
    """uint8 crops -> the model's input tensor: raw uint8, normalised float, or quantized int8."""
    pixels = np.asarray(pixels)
    size = int(input_detail["shape"][1])
    if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
        raise SpnasError(f"expected uint8 crops (N, {size}, {size}, 3), got {pixels.shape}")
    dtype = np.dtype(input_detail["dtype"])
    if dtype == np.uint8:
        return pixels.astype(np.uint8)
    x = normalize(pixels, spec, layout="NHWC")
    if dtype == np.int8:
        scale, zero_point = input_detail["quantization"]
        return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    return x


class TFLiteRunner(RunnerBase):
    """LiteRT interpreter (XNNPACK, the default CPU delegate) fed like a deployed app."""

    format = FORMAT

    def __init__(self, source, num_threads: int = 1, batch: int | None = None):
        from spnas.export.tflite_mediapipe import logits_view, softmax_input

        content = source if isinstance(source, bytes) else Path(source).read_bytes()
        self.interpreter = open_interpreter(source, num_threads)  # first: a broken file fails here in one line
        self.metadata = read_metadata(content)
        # A softmax-output model (the MediaPipe variant) is gated on the logits the softmax takes.
        if softmax_input(content) is not None:
            self.interpreter = open_interpreter(logits_view(content), num_threads)
        self.spec = spec_from_metadata(self.metadata)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_dtype = np.dtype(self.input["dtype"])
        weights = [d for d in self.interpreter.get_tensor_details() if np.dtype(d["dtype"]) == np.float16]
        self.precision = self.metadata.get("spnas.precision") or {"int8": "int8", "uint8": "int8"}.get(
            self.input_dtype.name, "fp16" if weights else "fp32")
        self.batch = 1
        if batch and batch > 1 and tuple(self.input["shape"][:1]) == (1,):
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self.batch = batch

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        return prepare_input(pixels, self.input, self.spec)

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        """``batch`` images per call (the last call padded with zeros), one by one by default."""
        logits = []
        for start in range(0, len(prepared), self.batch):
            chunk = prepared[start:start + self.batch]
            filled = len(chunk)
            if filled < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - filled, *chunk.shape[1:]), chunk.dtype)])
            self.interpreter.set_tensor(self.input["index"], chunk)
            self.interpreter.invoke()
            logits.append(self.interpreter.get_tensor(self.output["index"])[:filled])
        return self.decode(np.concatenate(logits))

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """The output tensor as float32 logits (dequantized for an int8 model); also for outputs a phone returned."""
        scale, zero_point = self.output["quantization"]
        if scale:
            return ((raw.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
        return raw.astype(np.float32)


TAKES_BATCHES = True  # resize_tensor_input


def load(path, num_threads: int = 1, batch: int | None = None) -> TFLiteRunner:
    """Open a ``.tflite`` artifact in the LiteRT interpreter (XNNPACK) with ``num_threads``; ``batch``: its input
    resized to that many images (validation), else the exported batch of 1."""
    path = Path(path)
    if not path.is_file():
        raise SpnasError(f"{path}: no such TFLite file")
    return TFLiteRunner(path, num_threads, batch)
