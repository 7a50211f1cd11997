"""ExecuTorch export: ``.pte`` programs fully delegated to XNNPACK, fp32 and int8, run in ExecuTorch's runtime.

**Exporter.** ``torch.export`` of the reference model (eval mode, static batch 1), then
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and ``to_executorch``.
XNNPACK's partitioner folds BatchNorm into the convolutions and takes the whole graph: one
delegate call and no kernel from ExecuTorch's portable library.  That is checked on every
export (``lower``): a node left outside the delegate, or any operator in the program's
execution plan, raises ``SpnasError`` naming it, because on a phone those run on slow
portable kernels.  The delegated / non-delegated op counts go into ``Artifact.details`` and,
as the ``xnnpack`` accelerator, into the entry's ``accelerators`` (``spnas.accelerators``);
with ``ctx.options.executorch.pte_partitioners`` the Vulkan and Core ML partitioners are asked too.

**int8** lowers the export's ``QuantPlan`` by default (``spnas.export.executorch_plan``): the
PT2E graph ``XNNPACKQuantizer`` annotates, with every observer replaced by the plan's grid and
no calibration, so the ``.pte`` computes what the TFLite, ONNX and CoreML int8 artifacts compute
and joins their pairwise agreement.  ``ctx.options.executorch.executorch_int8 = "pt2e"`` (``spnas-export
--executorch-int8 pt2e``) keeps ExecuTorch's own flow for comparison: ``XNNPACKQuantizer`` with
``get_symmetric_quantization_config(is_per_channel=True)`` (``HistogramObserver`` activations),
``prepare_pt2e``, calibration on ``ctx.calibration_pixels`` (on a copy exported with a dynamic
batch, in chunks), ``convert_pt2e``; that artifact is its own quantization, not the plan's.

**Input** ``forward(input)``: float32 NCHW ``(1, 3, S, S)`` (``S = ctx.preprocessing.input_size``),
RGB, normalised ``(pixel / divisor - mean) / std``; output float32 logits ``(1, num_classes)``.
The int8 program has the same float input and output: it quantizes inside the delegate.

**Metadata** are constant methods of the program (``constant_methods``), so an app reads them
with the same ``Module.execute(name)`` call it runs the model with: ``spnas_preprocessing``,
``spnas_num_classes``, ``spnas_weights``, ``spnas_precision`` and ``spnas_input`` return one
string each (the ``artifact_metadata`` values, JSON where structured), ``spnas_class_names``
the index-ordered class names.  The runner reads the preprocessing back from the program.

**Threads.** The runtime's thread pool is process-wide, and XNNPACK captures it when a method
is loaded: resetting it afterwards frees the pool under a live program.  ``load(path,
num_threads=n)`` therefore sets it before the first method of the process is loaded and refuses
to change it later (``spnas-bench`` runs each thread count in its own worker process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import executorch  # noqa: F401  (the extra: when it is missing, format_module gives the install hint)
import numpy as np

from spnas.accelerators.executorch_partitioners import GLUE_OPS
from spnas.errors import SpnasError
from spnas.export import Artifact, ExportContext, RunnerBase, artifact_metadata, spec_from_metadata
from spnas.preprocess import PreprocessSpec, normalize

# torchao (imported by the runtime and the quantizer) logs its optional CUDA kernels it cannot load: not ours to fix.
logging.getLogger("torchao").setLevel(logging.ERROR)
SUFFIX = ".pte"
FORMAT = "executorch"
METHOD = "forward"
METADATA_PREFIX = "spnas_"
CLASS_NAMES_METHOD = "spnas_class_names"
CALIBRATION_CHUNK = 16  # images per calibration forward: bounds memory, amortises the observers' per-call cost
PARTITIONER = "XnnpackPartitioner"
INPUT_DOC = ("forward(input): float32 NCHW (1, 3, S, S), RGB, (pixel / divisor - mean) / std with spnas_preprocessing; "
             "returns float32 logits (1, num_classes)")

_methods_loaded = False  # set once a method is loaded in this process: the thread pool is fixed from then on


# ---------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet():
    """torch.export, EXIR and torchao's import emit deprecation notes meant for their own developers."""
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree_log.setLevel(level)


def example_input(spec: PreprocessSpec, batch: int = 1):
    import torch

    return torch.zeros(batch, 3, spec.input_size, spec.input_size)


def export_graph(model, spec: PreprocessSpec, *, dynamic_batch: bool = False):
    """``torch.export`` of the eval-mode model; ``dynamic_batch`` for calibration in chunks."""
    import torch

    with _quiet():
        if dynamic_batch:
            shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
            return torch.export.export(model.eval(), (example_input(spec, 2),), dynamic_shapes=shapes)
        return torch.export.export(model.eval(), (example_input(spec),))


def quantize_default(model, calibration_pixels: np.ndarray, spec: PreprocessSpec):
    """ExecuTorch's default XNNPACK int8 flow (module docstring) -> a batch-1 ``ExportedProgram``."""
    import torch

    if len(calibration_pixels) == 0:
        raise SpnasError("int8 ExecuTorch export needs at least one calibration image")
    with _quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(export_graph(model, spec, dynamic_batch=True).module(), quantizer)
        with torch.no_grad():
            for start in range(0, len(calibration_pixels), CALIBRATION_CHUNK):
                prepared(torch.from_numpy(normalize(calibration_pixels[start:start + CALIBRATION_CHUNK], spec)))
        converted = convert_pt2e(prepared)
        return torch.export.export(converted, (example_input(spec),))


def metadata_methods(metadata: dict[str, str], class_names: list[str]) -> dict[str, object]:
    """``spnas.x`` metadata entries -> ``spnas_x`` constant methods, plus the class names."""
    methods: dict[str, object] = {key.replace(".", "_"): value for key, value in metadata.items()}
    methods[CLASS_NAMES_METHOD] = list(class_names)
    return methods


def _drop_provenance(exported) -> None:
    """Drop the nodes' ``from_node`` provenance: every EXIR pass deep-copies that chain into the nodes it makes, so
    lowering the int8 program spent a seventh of its time copying it (23.3 s with it, 20.0 s without, AMD EPYC).
    Debugging metadata only: the delegate's ops, weights and outputs are the same."""
    import torch

    for module in exported.graph_module.modules():
        if isinstance(getattr(module, "graph", None), torch.fx.Graph):
            for node in module.graph.nodes:
                node.meta.pop("from_node", None)


def lower(exported, constant_methods: dict[str, object]) -> tuple[bytes, dict]:
    """Lower to XNNPACK and serialise; raise if any op would run outside the delegate."""
    _drop_provenance(exported)
    with _quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower

        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                           constant_methods=constant_methods)
        info = get_delegation_info(edge.exported_program().graph_module)
        program = edge.to_executorch()
    outside = {op: entry.non_delegated for op, entry in info.delegation_by_operator.items()
               if entry.non_delegated and op not in GLUE_OPS}
    plan = next(p for p in program.executorch_program.execution_plan if p.name == METHOD)
    kernels = sorted({op.name for op in plan.operators})
    if outside or kernels:
        names = ", ".join([*(f"{op} x{count}" for op, count in sorted(outside.items())), *kernels])
        raise SpnasError(f"ExecuTorch lowering left ops outside the XNNPACK delegate (portable kernels): {names}")
    delegation = {"partitioner": PARTITIONER, "delegated_subgraphs": int(info.num_delegated_subgraphs),
                  "delegated_ops": int(info.num_delegated_nodes), "non_delegated_ops": sum(outside.values()),
                  "portable_kernels": kernels,
                  "delegated_by_op": {op: int(entry.delegated)
                                      for op, entry in sorted(info.delegation_by_operator.items()) if entry.delegated}}
    return bytes(program.buffer), delegation


@contextlib.contextmanager
def _lowering_worker(exported, constant_methods: dict[str, object]):
    """``lower`` of one program in a child interpreter (``python -c``, so a caller's script needs no ``__main__``
    guard); yields a function returning its ``(bytes, delegation)``.  The program goes in as ``torch.export.save``
    bytes on stdin, the result or the error comes back pickled on stdout, stderr goes to a temporary file (a
    chatty child cannot block on a full pipe)."""
    import io
    import pickle
    import subprocess
    import tempfile

    import torch

    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", "import sys; job = sys.stdin.buffer.read(); "  # read before the slow imports
               "from spnas.export.executorch import _lower_worker; _lower_worker(job)"]
    with tempfile.TemporaryFile() as stderr, \
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env) as child:
        child.stdin.write(pickle.dumps((buffer.getvalue(), constant_methods)))
        child.stdin.close()

        def result() -> tuple[bytes, dict]:
            output = child.stdout.read()
            child.wait()
            if child.returncode != 0 or not output:
                stderr.seek(0)
                tail = stderr.read().decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise SpnasError(f"ExecuTorch lowering worker failed (exit {child.returncode}): {tail[0][:200]}")
            status, value = pickle.loads(output)
            if status == "error":
                raise SpnasError(value)
            return value

        try:
            yield result
        finally:
            if child.poll() is None:
                child.kill()


def _lower_worker(job: bytes) -> None:
    """The child's side of ``_lowering_worker``."""
    import io
    import pickle

    import torch

    program, constant_methods = pickle.loads(job)
    with _quiet():
        import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops an int8 program uses)

        exported = torch.export.load(io.BytesIO(program))
    try:
        result = ("ok", lower(exported, constant_methods))
    except SpnasError as exc:
        result = ("error", str(exc))
    sys.stdout.buffer.write(pickle.dumps(result))


def export(ctx: ExportContext) -> list[Artifact]:
    """Write ``spnasnet_100_fp32.pte`` and, with ``ctx.int8``, ``spnasnet_100_int8.pte`` (``ctx.options
    .executorch.executorch_int8``: ``"plan"``, the default, lowers the export's plan; ``"pt2e"`` is ExecuTorch's own
    flow).

    Lowering is single-threaded Python (decompositions, XNNPACK's passes, serialisation): with ``int8``
    the fp32 program is lowered in a worker process while this one builds and lowers the int8 program,
    so the two lowerings use both cores (a quiet measurement is still to be made); the bytes are the same as
    lowered in turn."""
    from spnas.accelerators.executorch_partitioners import partition_entries, xnnpack_entry
    from spnas.io import atomic_write_bytes

    if len(ctx.class_names) != ctx.model.num_classes:
        raise SpnasError(f"{len(ctx.class_names)} class names for a model with {ctx.model.num_classes} outputs")
    spec = ctx.preprocessing
    size = spec.input_size
    from importlib.metadata import version

    common = {"exporter": f"torch.export + executorch {version('executorch')} to_edge_transform_and_lower",
              "input": {"name": "input", "layout": "NCHW", "dtype": "float32", "shape": [1, 3, size, size]}}

    def methods(precision: str) -> dict[str, object]:
        return metadata_methods({**artifact_metadata(ctx, precision), "spnas.input": INPUT_DOC}, ctx.class_names)

    programs = {"fp32": (export_graph(ctx.model, spec), {})}
    lowered = {}
    if ctx.int8:
        ctx.progress("executorch: fp32 XNNPACK lowering (in a worker process)")
        with _lowering_worker(programs["fp32"][0], methods("fp32")) as fp32_result:
            programs["int8"] = int8_program(ctx)
            ctx.progress("executorch: int8 XNNPACK lowering")
            lowered["int8"] = lower(programs["int8"][0], methods("int8"))
            lowered["fp32"] = fp32_result()
    else:
        ctx.progress("executorch: fp32 XNNPACK lowering")
        lowered["fp32"] = lower(programs["fp32"][0], methods("fp32"))
    artifacts = []
    for precision, (exported, extra) in programs.items():
        content, delegation = lowered[precision]
        ctx.progress(f"executorch: {precision} {delegation['delegated_ops']} ops delegated to XNNPACK in "
                     f"{delegation['delegated_subgraphs']} subgraph(s), {delegation['non_delegated_ops']} outside")
        path = atomic_write_bytes(Path(ctx.out_dir) / f"spnasnet_100_{precision}{SUFFIX}", content)
        accelerators = {"xnnpack": xnnpack_entry(delegation)}
        if ctx.options.executorch.pte_partitioners:
            ctx.progress(f"executorch: {precision} Vulkan and Core ML partitioners")
            accelerators.update(partition_entries(exported))
        artifacts.append(Artifact(FORMAT, precision, path, {**common, "metadata_methods": sorted(methods(precision)),
                                                            "delegation": delegation, **extra},
                                  entry={"accelerators": accelerators}))
    return artifacts


def int8_program(ctx: ExportContext):
    """The int8 ``ExportedProgram`` of the chosen flow and its ``details["quantization"]``."""
    flow = ctx.options.executorch.executorch_int8
    if flow == "pt2e":
        ctx.progress(f"executorch: int8 ExecuTorch's own PT2E flow, calibrating on {len(ctx.calibration_pixels)} "
                     "images")
        scheme = {"flow": flow, "quantizer": "XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True)",
                  "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor affine, HistogramObserver",
                  "calibration_images": int(len(ctx.calibration_pixels))}
        return quantize_default(ctx.model, ctx.calibration_pixels, ctx.preprocessing), {"quantization": scheme}
    from spnas.export.executorch_plan import quantize_plan
    from spnas.folding import fold_batchnorm
    from spnas.quantize import plan_to_lower

    plan, quantization = plan_to_lower(ctx, FORMAT)
    scheme = {"flow": flow, "scheme": "XNNPACKQuantizer patterns with the plan's observers, no calibration: int8 "
              "per-channel symmetric weights, int8 per-tensor affine activations, int32 bias (XNNPACK)",
              **quantization}
    with _quiet():
        exported = quantize_plan(fold_batchnorm(ctx.model), plan, ctx.preprocessing, export_graph)
    return exported, {"quantization": scheme}


# ---------------------------------------------------------------- runtime


@contextlib.contextmanager
def _native_stderr_silenced():
    """cpuinfo prints INFO lines straight to file descriptor 2 when the runtime's thread pool starts."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def set_threads(num_threads: int | None) -> int:
    """Size the process-wide thread pool before any method is loaded; returns the count in effect."""
    with _quiet():
        from executorch.extension.pybindings import portable_lib

    with _native_stderr_silenced():
        current = portable_lib._threadpool_get_thread_count()
        if num_threads is None or num_threads == current:
            return current
        if num_threads < 1:
            raise SpnasError(f"ExecuTorch thread count must be at least 1, got {num_threads}")
        if _methods_loaded:
            raise SpnasError(f"ExecuTorch's thread pool is fixed at {current} thread(s) once a program is loaded in "
                             f"this process; load with num_threads={num_threads} in a fresh process")
        portable_lib._unsafe_reset_threadpool(int(num_threads))
        return portable_lib._threadpool_get_thread_count()


def _load_program(source):
    with _quiet():
        from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(source)
    except (RuntimeError, ValueError) as exc:
        raise SpnasError(f"{source if isinstance(source, (str, Path)) else 'program'}: ExecuTorch cannot load it "
                         f"({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__})") \
            from exc


def program_metadata(program) -> dict:
    """The ``spnas_*`` constant methods of a loaded program, keyed back as ``spnas.*`` (class names as a list)."""
    metadata: dict = {}
    for name in sorted(program.method_names):
        if not name.startswith(METADATA_PREFIX):
            continue
        values = list(program.load_method(name).execute([]))
        key = "spnas." + name.removeprefix(METADATA_PREFIX)
        metadata[key] = values if name == CLASS_NAMES_METHOD else values[0]
    return metadata


def read_metadata(path: str | Path) -> dict:
    """The metadata a ``.pte`` carries, read through ExecuTorch's runtime as an app reads it."""
    return program_metadata(_load_program(str(_checked_path(path))))


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SpnasError(f"{path}: no such ExecuTorch program")
    return path


class ExecuTorchRunner(RunnerBase):
    """A ``.pte`` in ExecuTorch's runtime (XNNPACK delegate), fed like an app feeds it."""

    format = FORMAT

    def __init__(self, path: str | Path, num_threads: int | None = None):
        global _methods_loaded

        self.path = _checked_path(path)
        self.threads = set_threads(num_threads)
        self.program = _load_program(str(self.path))
        if METHOD not in self.program.method_names:
            raise SpnasError(f"{self.path}: ExecuTorch program has no {METHOD!r} method")
        self.metadata = program_metadata(self.program)
        self.spec = spec_from_metadata(self.metadata)
        self.precision = self.metadata.get("spnas.precision", "fp32")
        self.class_names = self.metadata.get("spnas.class_names")
        self.method = self.program.load_method(METHOD)
        _methods_loaded = True
        self.input_shape = tuple(self.method.metadata.input_tensor_meta(0).sizes())

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        size = self.input_shape[2:]
        if pixels.ndim != 4 or pixels.shape[1:3] != size or pixels.shape[3] != 3:
            raise SpnasError(f"expected uint8 crops (N, {size[0]}, {size[1]}, 3), got {pixels.shape}")
        return normalize(pixels, self.spec, "NCHW")

    def invoke(self, prepared) -> np.ndarray:
        """Logits of normalised NCHW float32 input (numpy or torch), one execute per image.  ExecuTorch's
        binding reads a tensor's memory as contiguous whatever its strides (a channels-last view of the
        right shape gives wrong logits and no error), so every image is passed as a contiguous copy."""
        import torch

        batch = torch.as_tensor(prepared)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape[1:] or batch.dtype != torch.float32:
            raise SpnasError(f"expected float32 NCHW input (N, {', '.join(map(str, self.input_shape[1:]))}), "
                             f"got {batch.dtype} {tuple(batch.shape)}")
        logits = [self.method.execute([image.unsqueeze(0).contiguous()])[0].numpy() for image in batch]
        return np.concatenate(logits).astype(np.float32)


def load(path: str | Path, num_threads: int | None = None) -> ExecuTorchRunner:
    """Open a ``.pte`` in ExecuTorch's runtime; ``num_threads`` sizes its thread pool (None: the runtime default)."""
    return ExecuTorchRunner(path, num_threads)
