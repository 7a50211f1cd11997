"""Run one .tflite on prepared inputs, in whichever Python executes this file.

The same script runs in the emulated aarch64 guest (Debian's python3.11 under qemu-user, the
unzipped aarch64 wheels on ``PYTHONPATH``) and on the x86 host, so the two runs differ only in
the CPU kernels underneath.  It therefore imports nothing but the standard library, numpy and
ai_edge_litert, never ``spnas``.

    python guest_runner.py MODEL.tflite INPUTS.npy --run xnnpack=OUT.npy --run builtin=OUT2.npy

``INPUTS.npy`` holds the model's input tensors stacked on a leading axis (already normalised
and quantized by the host); each ``OUT.npy`` gets the raw output tensors stacked the same way
(int8 stays int8, so step differences are exact).  A JSON summary goes to stdout.  The line
``spnas-guest: begin <kernels>`` on stderr precedes each run, so the caller can tell which run
LiteRT's "Created TensorFlow Lite XNNPACK delegate" log line belongs to.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

KERNELS = ("xnnpack", "builtin")


def run_model(model_path: str, inputs: np.ndarray, kernels: str, num_threads: int = 1) -> tuple[np.ndarray, dict]:
    """Invoke the model once per input (as an app does); returns the raw outputs and run facts."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if kernels == "xnnpack" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=model_path, num_threads=num_threads,
                              experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    outputs = []
    start = time.perf_counter()
    for sample in inputs:
        interpreter.set_tensor(input_detail["index"], sample[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_detail["index"])[0].copy())
    seconds = time.perf_counter() - start
    scale, zero_point = output_detail["quantization"]
    facts = {"seconds_per_input": seconds / max(len(inputs), 1), "output_dtype": np.dtype(output_detail["dtype"]).name,
             "output_scale": float(scale), "output_zero_point": int(zero_point)}
    return np.stack(outputs), facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("inputs")
    parser.add_argument("--run", action="append", required=True, metavar="KERNELS=OUT.npy",
                        help=f"kernels one of {', '.join(KERNELS)}; repeatable")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    inputs = np.load(args.inputs)
    from importlib.metadata import version

    summary = {"machine": platform.machine(), "python": platform.python_version(),
               "litert": version("ai-edge-litert"), "numpy": np.__version__, "runs": {}}
    for run in args.run:
        kernels, _, out_path = run.partition("=")
        if kernels not in KERNELS or not out_path:
            parser.error(f"--run {run!r}: expected KERNELS=OUT.npy with KERNELS one of {', '.join(KERNELS)}")
        print(f"spnas-guest: begin {kernels}", file=sys.stderr, flush=True)
        outputs, facts = run_model(args.model, inputs, kernels, args.threads)
        np.save(out_path, outputs)
        summary["runs"][kernels] = facts
        print(f"spnas-guest: end {kernels}", file=sys.stderr, flush=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
