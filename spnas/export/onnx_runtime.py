"""ONNX artifacts in ONNX Runtime's CPU provider, fed as an app feeds them: the format's runner.

ONNX Runtime session: ``ORT_ENABLE_ALL`` (it fuses DQ-Conv-Q into QLinearConv and moves int8
convolutions to NHWC; fp32 gets NCHWc; BASIC/EXTENDED were 2.5x / 1.1x slower), sequential
execution, ``intra_op_num_threads`` from ``load(path, num_threads=...)``, thread spinning off
(``spinning=True`` to re-enable; see ``session_options``).  The artifact is the portable QDQ model, not an offline
ORT-optimized one: that one is hardware-specific and only saves session start-up time.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

from spnas.errors import SpnasError
from spnas.export import RunnerBase, spec_from_metadata
from spnas.preprocess import normalize

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
X86_MACHINES = ("x86_64", "AMD64")
VNNI_FLAGS = {"avx512_vnni", "avx_vnni"}


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict."""
    return {p.key: p.value for p in load_proto(path).metadata_props}


def load_proto(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise SpnasError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise SpnasError(f"{path}: not a valid ONNX file ({type(exc).__name__})") from exc


def host_has_vnni() -> bool:
    """Whether this CPU has the int8 dot product ONNX Runtime's U8S8 kernels need to be exact (x86)."""
    from spnas.machine import machine_facts

    return bool(VNNI_FLAGS & set(machine_facts().get("cpu_simd", [])))


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

    def __init__(self, path: str | Path, num_threads: int | None = None, spinning: bool = False,
                 batch: int | None = None):
        proto = load_proto(path)
        metadata = {p.key: p.value for p in proto.metadata_props}
        self.path = Path(path)
        self.metadata = metadata
        self.spec = spec_from_metadata(metadata)
        quantized = any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in proto.graph.node)
        self.precision = metadata.get("spnas.precision", "int8" if quantized else "fp32")
        if batch and batch > 1:
            proto = dynamic_batch(proto)
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), session_options(num_threads, spinning),
                                                providers=["CPUExecutionProvider"])
        except (InvalidProtobuf, InvalidGraph, Fail) as exc:
            raise SpnasError(f"{path}: ONNX Runtime cannot load it ({str(exc).strip().splitlines()[0][:160]})") \
                from exc
        fixed = self.session.get_inputs()[0].shape[0]
        self.batch_size = fixed if isinstance(fixed, int) else batch or 32

    @property
    def weight_encoding(self) -> str | None:
        """int8: the ``WEIGHT_ENCODINGS`` key (artifacts older than the choice are u8s8); fp32: None."""
        if self.precision != "int8":
            return None
        return json.loads(self.metadata.get("spnas.int8_scheme", "{}")).get("weight_encoding", "u8s8")

    def cpu_warning(self) -> str | None:
        if self.weight_encoding != "u8s8" or platform.machine() not in X86_MACHINES or host_has_vnni():
            return None
        return ("u8s8 int8 weights on an x86 CPU without VNNI: ONNX Runtime's U8S8 kernels saturate here, so these "
                "figures are not the plan's (re-export with --onnx-int8 portable, or run the session with "
                "session.x64quantprecision=1)")

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        return normalize(pixels, self.spec, "NCHW")

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        outputs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: prepared[start:start + self.batch_size]})[0]
                   for start in range(0, len(prepared), self.batch_size)]
        return self.decode(np.concatenate(outputs))

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """The ``logits`` output as float32; also for outputs a phone returned."""
        return np.asarray(raw).astype(np.float32)


def dynamic_batch(proto):
    """A batch-1 graph with its batch dimension made symbolic, so validation feeds it many images per run: the
    input and output say ``N``, a ``Reshape`` to a leading 1 infers it (-1), and the
    intermediate shapes written at batch 1 are dropped.  Unchanged if any of that does not hold."""
    graph = proto.graph
    ends = [*graph.input, *graph.output]
    if any(not e.type.tensor_type.shape.dim or e.type.tensor_type.shape.dim[0].dim_value != 1 for e in ends):
        return proto
    shapes = {node.input[1] for node in graph.node if node.op_type == "Reshape"}
    initializers = {init.name: init for init in graph.initializer if init.name in shapes}
    if shapes - set(initializers):
        return proto  # a shape computed in the graph: leave the graph at batch 1
    targets = {name: numpy_helper.to_array(init).copy() for name, init in initializers.items()}
    if any(shape.size == 0 or (shape[0] == 1 and -1 in shape[1:]) for shape in targets.values()):
        return proto
    batched = onnx.ModelProto()
    batched.CopyFrom(proto)
    for init in batched.graph.initializer:
        if init.name in targets and targets[init.name][0] == 1:
            targets[init.name][0] = -1  # not 0: the exporter writes allowzero=1
            init.CopyFrom(numpy_helper.from_array(targets[init.name], init.name))
    for end in [*batched.graph.input, *batched.graph.output]:
        end.type.tensor_type.shape.dim[0].dim_param = "N"
    del batched.graph.value_info[:]
    return batched


TAKES_BATCHES = True  # dynamic_batch


def load(path: str | Path, num_threads: int | None = None, spinning: bool = False,
         batch: int | None = None) -> OnnxRunner:
    """Open an ONNX artifact in ONNX Runtime; ``num_threads`` sets intra-op threads (None: ORT default);
    ``batch``: a batch-1 graph runs with a symbolic batch, that many images per run (validation)."""
    return OnnxRunner(path, num_threads, spinning, batch)
