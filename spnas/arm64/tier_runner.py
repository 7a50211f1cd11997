"""Run .tflite, .onnx and .pte artifacts on prepared inputs, in whichever Python executes this file.

The CPU-tier matrix (``spnas.arm64.tiers``) runs this script natively and under qemu-user
(``qemu-x86_64 -cpu Haswell-noTSX`` with this host's Python, ``qemu-aarch64 -cpu CORE`` with
the cached Debian arm64 Python), so the runs differ only in the CPU underneath.  Like
``guest_runner.py`` it imports nothing but the standard library, numpy and the runtimes.

    python tier_runner.py JOBS.json

``JOBS.json`` lists ``{"model": PATH, "inputs": IN.npy, "outputs": OUT.npy}``; each model is
invoked once per input at one thread (XNNPACK for LiteRT and ExecuTorch, the CPU provider for
ONNX Runtime) and its raw outputs are saved stacked.  A JSON summary (machine, runtime versions,
per model the output quantization and seconds per input) goes to stdout.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib.metadata import version

import numpy as np
from guest_runner import run_model as run_tflite


def run_onnx(model_path: str, inputs: np.ndarray) -> tuple[np.ndarray, dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: sample[None]})[0][0] for sample in inputs]
    return np.stack(outputs), {"onnxruntime": ort.__version__}


def run_pte(model_path: str, inputs: np.ndarray) -> tuple[np.ndarray, dict]:
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(1)
    method = Runtime.get().load_program(model_path).load_method("forward")
    outputs = [method.execute([torch.from_numpy(np.ascontiguousarray(sample[None]))])[0].numpy()[0]
               for sample in inputs]
    return np.stack(outputs), {"executorch": version("executorch")}


def run_job(job: dict) -> dict:
    inputs = np.load(job["inputs"])
    start = time.perf_counter()
    suffix = job["model"].rsplit(".", 1)[-1].lower()
    if suffix == "tflite":
        outputs, facts = run_tflite(job["model"], inputs, "xnnpack")
        facts["litert"] = version("ai-edge-litert")
    elif suffix == "onnx":
        outputs, facts = run_onnx(job["model"], inputs)
    elif suffix == "pte":
        outputs, facts = run_pte(job["model"], inputs)
    else:
        raise SystemExit(f"{job['model']}: not a .tflite, .onnx or .pte")
    np.save(job["outputs"], outputs)
    return {**facts, "seconds_per_input": (time.perf_counter() - start) / max(len(inputs), 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: tier_runner.py JOBS.json")
    with open(argv[0]) as handle:
        jobs = json.load(handle)
    summary = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
               "models": {job["model"]: run_job(job) for job in jobs}}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
