"""Parity of a .tflite on aarch64 LiteRT kernels (under qemu-user) against x86 LiteRT and PyTorch.

Phones run the aarch64 build of LiteRT and XNNPACK, whose kernels are not the x86 ones the
rest of spnas verifies on.  The same prepared input tensors (from the tflite runner's
``prepare``, as a deployed app would feed them) go through ``guest_runner.py`` on the host
and in the emulated guest, and the raw output tensors are compared: int8 outputs in exact
quantization steps, float outputs in relative error.  Emulation proves the kernels'
arithmetic on those cores; its time is not latency, and GPU/NPU delegates are not covered.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from spnas.arm64.env import Arm64Env, Progress, prepare_env, run_summary, stderr_progress
from spnas.errors import SpnasError
from spnas.export.tflite_mediapipe import softmax_input
from spnas.parity import DEFAULT_THRESHOLDS, Thresholds, compare, to_json_number

GUEST_RUNNER = Path(__file__).with_name("guest_runner.py")
DEFAULT_CPUS = ("cortex-a55", "cortex-a76")  # the little and the big core of most current phones
DEFAULT_BUILTIN_CPU = "cortex-a76"
# An emulated int8 invoke takes ~0.5 s, a float one several seconds (qemu's float SIMD is slow);
# one float image already shows the relative error, 20 int8 images show step differences.
DEFAULT_MAX_IMAGES = {"int8": 20, "fp16": 5, "fp32": 5}
XNNPACK_LOG = "XNNPACK delegate"
GUEST_TIMEOUT_S = 600


def guest_runner_args(model: Path, inputs: Path, outputs: dict[str, Path]) -> list[str]:
    """Arguments of guest_runner.py; XNNPACK first, as LiteRT may log the delegate only once per process."""
    order = sorted(outputs, key=lambda kernels: kernels != "xnnpack")
    return [str(model), str(inputs), *(arg for kernels in order for arg in ("--run", f"{kernels}={outputs[kernels]}"))]


def delegate_applied(stderr: str) -> bool:
    """Whether LiteRT logged creating the XNNPACK delegate during the guest's ``xnnpack`` run."""
    match = re.search(r"spnas-guest: begin xnnpack\n(.*?)spnas-guest: end xnnpack", stderr, re.DOTALL)
    return bool(match) and XNNPACK_LOG in match[1]


def run_guest_runner(command: list[str], outputs: dict[str, Path], where: str, env: dict | None = None) -> dict:
    """Run guest_runner.py (host or guest); returns its summary with the raw outputs loaded."""
    summary, stderr = run_summary(command, where, "LiteRT", env, GUEST_TIMEOUT_S)
    for kernels, path in outputs.items():
        summary["runs"][kernels]["outputs"] = np.load(path)
    if "xnnpack" in outputs:
        summary["runs"]["xnnpack"]["xnnpack_applied"] = delegate_applied(stderr)
    return summary


def dequantize(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if np.issubdtype(raw.dtype, np.integer) and scale:
        return ((raw.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)
    return raw.astype(np.float32)


def compare_outputs(candidate: np.ndarray, baseline: np.ndarray) -> dict:
    """Raw output tensors of two runs of one model: exactness, step and relative differences, top-1."""
    if candidate.shape != baseline.shape or candidate.dtype != baseline.dtype:
        raise SpnasError(f"output tensors differ in kind: {candidate.dtype}{candidate.shape} vs "
                         f"{baseline.dtype}{baseline.shape}")
    wide_candidate, wide_baseline = candidate.astype(np.float64), baseline.astype(np.float64)
    difference = np.abs(wide_candidate - wide_baseline)
    flat_candidate = wide_candidate.reshape(len(candidate), -1)
    flat_baseline = wide_baseline.reshape(len(baseline), -1)
    value_range = float(wide_baseline.max() - wide_baseline.min()) or 1.0
    return {
        "bit_exact": bool(np.array_equal(candidate, baseline)),
        "differing_values": int(np.count_nonzero(difference)),
        "n_values": int(difference.size),
        "max_step_diff": int(difference.max()) if np.issubdtype(candidate.dtype, np.integer) else None,
        "max_abs_diff": float(difference.max()),
        "max_rel_error": float(difference.max()) / value_range,
        "top1_agreement": float(np.mean(flat_candidate.argmax(axis=1) == flat_baseline.argmax(axis=1))),
    }


def reference_metrics(raw: np.ndarray, facts: dict, reference: np.ndarray) -> dict:
    logits = dequantize(raw, facts["output_scale"], facts["output_zero_point"])
    metrics = compare(reference, logits.reshape(len(logits), -1))
    return {key: to_json_number(value) for key, value in metrics.items()}


def run_label(run: dict) -> str:
    return f"{run['cpu']} {'XNNPACK' if run['xnnpack'] else 'builtin kernels'}"


def gate_failures(runs: list[dict], precision: str, thresholds: Thresholds) -> list[str]:
    """int8 XNNPACK bit-exact to x86, XNNPACK really applied, and each run within the parity thresholds."""
    failures = []
    for run in runs:
        label = run_label(run)
        if run["xnnpack"] and not run["xnnpack_applied"]:
            failures.append(f"{label}: LiteRT did not apply XNNPACK in the guest")
        versus = run["vs_x86"]
        if precision == "int8" and run["xnnpack"] and not versus["bit_exact"]:
            failures.append(f"{label}: {versus['differing_values']} of {versus['n_values']} outputs differ from "
                            f"x86 (max {versus['max_step_diff']} steps)")
        reference = {key: float(value) for key, value in run["vs_reference"].items()}
        failures += [f"{label}: {failure}" for failure in thresholds.failures(reference)]
    return failures


def plan_runs(cpus: tuple[str, ...], builtin_cpu: str | None) -> dict[str, tuple[str, ...]]:
    """Kernels per CPU model: XNNPACK on each, builtin kernels once (on ``builtin_cpu``)."""
    plan = {cpu: ("xnnpack",) for cpu in cpus}
    if builtin_cpu:
        plan[builtin_cpu] = (*plan.get(builtin_cpu, ()), "builtin")
    if not plan:
        raise SpnasError("no CPU models to emulate")
    return plan


def check_cpus(env: Arm64Env, cpus) -> None:
    available = env.cpu_models()
    unknown = [cpu for cpu in cpus if cpu not in available]
    if unknown:
        raise SpnasError(f"qemu {env.version_text} has no CPU model {unknown[0]!r}; it has {', '.join(available)}")


def verify_arm64(artifact: str | Path, pixels: np.ndarray, reference: np.ndarray, *,
                 cpus: tuple[str, ...] = DEFAULT_CPUS, builtin_cpu: str | None = DEFAULT_BUILTIN_CPU,
                 max_images: int | None = None, thresholds: Thresholds | None = None,
                 cache_dir: str | Path | None = None, progress: Progress = stderr_progress) -> dict:
    """Run ``artifact`` on emulated aarch64 cores and compare with x86 LiteRT and the reference logits.

    ``pixels``: uint8 (N, S, S, 3) parity crops, ``reference``: PyTorch logits (N, K);
    the first ``max_images`` are used (default: 20 for int8, 5 for float).  ``thresholds``
    (default: the precision's parity gate) apply to every run against the reference; int8
    XNNPACK runs must also be bit-exact to x86.  CPU models run in parallel, one qemu per core.
    Returns the report's ``arm64`` block, with ``passed`` and ``failures``.
    """
    from spnas.export import load_runner

    start = time.perf_counter()
    artifact = Path(artifact).resolve()
    if artifact.suffix.lower() != ".tflite":
        raise SpnasError(f"{artifact.name}: --arm64 runs .tflite artifacts only")
    runner = load_runner(artifact)
    if softmax_input(artifact.read_bytes()) is not None:  # the guest compares raw outputs with logits
        raise SpnasError(f"{artifact.name}: --arm64 compares raw outputs with the reference logits, and this app "
                         "variant outputs softmax probabilities; run --arm64 on its plain artifact")
    thresholds = thresholds or DEFAULT_THRESHOLDS[runner.precision]
    if len(reference) != len(pixels):
        raise SpnasError(f"{len(pixels)} parity images but {len(reference)} reference logit rows")
    count = max_images or DEFAULT_MAX_IMAGES[runner.precision]
    pixels, reference = pixels[:count], np.asarray(reference)[:count]
    plan = plan_runs(tuple(cpus), builtin_cpu)
    env = prepare_env(cache_dir, progress=progress)
    check_cpus(env, plan)
    with tempfile.TemporaryDirectory(prefix="spnas-arm64-") as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs.npy"
        np.save(inputs, runner.prepare(pixels))
        outputs = {kernels: tmp / f"x86-{kernels}.npy" for kernels in ("xnnpack", "builtin")}
        progress(f"arm64: x86 LiteRT run of {artifact.name} on {len(pixels)} images")
        host = run_guest_runner([sys.executable, str(GUEST_RUNNER), *guest_runner_args(artifact, inputs, outputs)],
                                outputs, "x86 host")
        x86 = host["runs"]

        def emulate(cpu: str) -> tuple[list[str], dict]:
            cpu_start = time.perf_counter()
            outputs = {kernels: tmp / f"{cpu}-{kernels}.npy" for kernels in plan[cpu]}
            command = env.command(cpu, GUEST_RUNNER, *guest_runner_args(artifact, inputs, outputs))
            summary = run_guest_runner(command, outputs, f"emulated {cpu}", env.environment())
            progress(f"arm64: emulated {cpu}: done in {time.perf_counter() - cpu_start:.0f}s")
            return command, summary

        progress(f"arm64: emulating {', '.join(plan)} on {len(pixels)} images (an emulated {runner.precision} "
                 f"invoke takes {'~0.5' if runner.precision == 'int8' else 'a few'} s) ...")
        with ThreadPoolExecutor(max_workers=min(len(plan), os.cpu_count() or 1)) as pool:  # one qemu per core
            emulated = dict(zip(plan, pool.map(emulate, plan), strict=True))
    runs = []
    for cpu, (command, guest) in emulated.items():
        for kernels in plan[cpu]:
            facts = guest["runs"][kernels]
            run = {"cpu": cpu, "xnnpack": kernels == "xnnpack", "qemu_cpu": command[2],
                   "workarounds": env.workarounds(cpu),
                   "emulated_seconds_per_image": round(facts["seconds_per_input"], 3),
                   "vs_x86": compare_outputs(facts["outputs"], x86[kernels]["outputs"])}
            if kernels == "xnnpack":
                run["xnnpack_applied"] = facts["xnnpack_applied"]
            else:
                run["vs_x86_xnnpack"] = compare_outputs(facts["outputs"], x86["xnnpack"]["outputs"])
            run["vs_reference"] = reference_metrics(facts["outputs"], facts, reference)
            runs.append(run)
    failures = gate_failures(runs, runner.precision, thresholds)
    return {
        "artifact": str(artifact),
        "precision": runner.precision,
        "n_images": len(pixels),
        "environment": {"qemu": env.version_text, "qemu_source": env.qemu_source, "cache": str(env.root),
                        "guest": {key: guest[key] for key in ("machine", "python", "litert", "numpy")},
                        "host_litert": host["litert"], "threads": 1},
        "x86": {kernels: {"vs_reference": reference_metrics(facts["outputs"], facts, reference),
                          **({"xnnpack_applied": facts["xnnpack_applied"]} if kernels == "xnnpack" else {})}
                for kernels, facts in x86.items()},
        "runs": runs,
        "gate": {"int8_xnnpack_bit_exact_to_x86": runner.precision == "int8",
                 "thresholds": {k: v for k, v in vars(thresholds).items() if v is not None}},
        "failures": failures,
        "passed": not failures,
        "seconds": round(time.perf_counter() - start, 1),
    }


TABLE_HEADERS = ["cpu", "kernels", "bit-exact vs x86", "max steps", "rel err vs x86", "top1 vs x86", "top1 vs ref",
                 "rel err vs ref"]


def summary_table(result: dict) -> str:
    """One row per emulated run, for the CLI to print under the parity table."""
    from spnas.console import format_table

    rows = []
    for run in result["runs"]:
        versus, reference = run["vs_x86"], run["vs_reference"]
        rows.append([run["cpu"], "XNNPACK" if run["xnnpack"] else "builtin", "yes" if versus["bit_exact"] else "no",
                     "-" if versus["max_step_diff"] is None else str(versus["max_step_diff"]),
                     f"{versus['max_rel_error']:.1e}", f"{versus['top1_agreement']:.3f}",
                     f"{reference['top1_agreement']:.3f}", f"{reference['max_rel_error']:.1e}"])
    return format_table(TABLE_HEADERS, rows)
