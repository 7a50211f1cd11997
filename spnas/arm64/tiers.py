"""The CPU-tier matrix: .tflite, .onnx and .pte artifacts on older and other CPUs, under qemu-user.

A runtime picks its int8 kernels by the CPU's instructions (VNNI, AVX2, Arm dotprod, i8mm), and
not every kernel computes the same function (ONNX Runtime's U8S8 kernels saturate on x86
without VNNI).  Each named tier runs ``tier_runner.py`` on the same prepared inputs as the
native run: ``haswell`` is this host's own Python under ``qemu-x86_64 -cpu Haswell-noTSX``
(AVX2 and FMA, no AVX-512, no VNNI), the Arm tiers the cached Debian arm64 Python with LiteRT's
and ONNX Runtime's aarch64 wheels under ``qemu-aarch64 -cpu CORE``.  Each tier's logits are
compared with the native run's, the plan's simulation (int8 artifacts that lower the plan) and
the reference; emulated time is not latency.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas.arm64.env import Progress, prepare_env, run_summary, stderr_progress
from spnas.arm64.verify import compare_outputs, dequantize
from spnas.errors import SpnasError
from spnas.parity import Thresholds, compare, sqnr_db, to_json_number

TIER_RUNNER = Path(__file__).with_name("tier_runner.py")
TIER_BUDGET_DB = 1.0  # an int8 tier's SQNR (vs the reference) within this of the native run's, and of the simulation's
DEFAULT_MAX_IMAGES = 8  # an emulated int8 image takes 1-3 s per runtime, a float one several
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Tier:
    name: str
    machine: str  # x86_64 or aarch64
    qemu_cpu: str
    isa: str


TIERS = {tier.name: tier for tier in (
    Tier("haswell", "x86_64", "Haswell-noTSX", "x86-64 AVX2 + FMA, no AVX-512, no VNNI"),
    Tier("cortex-a53", "aarch64", "cortex-a53", "Armv8.0-A, no dotprod"),
    Tier("cortex-a76", "aarch64", "cortex-a76", "Armv8.2-A with dotprod"),
    Tier("cortex-a710", "aarch64", "cortex-a710", "Armv9.0-A with dotprod and i8mm"),
)}
# What a tier cannot run, and why (the entry says so instead of a figure).
UNAVAILABLE = {("aarch64", ".pte"): "ExecuTorch's Python runtime links libtorch, and PyPI's aarch64 torch wheel is "
                                    "the CUDA build (libtorch_cpu needs libcudart): not emulated"}


def parse_tiers(text: str) -> list[str]:
    """``haswell,cortex-a76`` -> the tier names, each known (one-line error naming the known ones)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TIERS]
    if unknown or not names:
        raise SpnasError(f"--cpu {text!r}: unknown tier {unknown[0] if unknown else '(none)'}; "
                         f"choose from {', '.join(TIERS)}")
    return list(dict.fromkeys(names))


def run_jobs(command: list[str], jobs: list[dict], where: str, env: dict | None = None) -> dict:
    """Run tier_runner.py on ``jobs``; its summary with each model's raw outputs loaded."""
    summary, _ = run_summary(command, where, "the runtimes", env, TIMEOUT_S)
    for job in jobs:
        summary["models"][job["model"]]["outputs"] = np.load(job["outputs"])
    return summary


def logits_of(run: dict) -> np.ndarray:
    raw = run["outputs"]
    logits = dequantize(raw, run.get("output_scale", 0.0), run.get("output_zero_point", 0))
    return logits.reshape(len(logits), -1)


def tier_failures(run: dict, native: dict, precision: str, thresholds: Thresholds) -> list[str]:
    """The precision's gate against the reference; int8: within ``TIER_BUDGET_DB`` of the native run
    and, for a plan lowering, of the plan's simulation."""
    failures = thresholds.failures(run["vs_reference"])
    if precision == "int8":
        own = run["vs_reference"]["sqnr_db"]
        for what, figure in (("the native run", native["vs_reference"]["sqnr_db"]),
                             ("the plan's simulation", native.get("simulation_vs_reference_sqnr_db"))):
            if figure is not None and not abs(own - figure) <= TIER_BUDGET_DB:
                failures.append(f"SQNR {own:.1f} dB vs {figure:.1f} dB on {what} (budget {TIER_BUDGET_DB:g} dB)")
    return failures


def verify_tiers(artifacts: list[str | Path], pixels: np.ndarray, reference: np.ndarray, tiers: list[str], *,
                 simulations: dict | None = None, thresholds: dict | None = None, max_images: int | None = None,
                 cache_dir: str | Path | None = None, progress: Progress = stderr_progress) -> dict[str, dict]:
    """Run every artifact natively and on each tier; returns ``{artifact path: the report's cpu_tiers block}``.

    ``pixels``: uint8 (N, S, S, 3) parity crops, ``reference``: PyTorch logits (N, K), the first
    ``max_images`` (default 8) used; ``simulations``: ``{artifact: simulated logits (N, K)}`` for
    the int8 artifacts that lower the plan; ``thresholds``: ``{precision: Thresholds}`` (default:
    the parity gate) against the reference.  Tiers run in parallel, one emulator per core.
    """
    from spnas.export import load_runner
    from spnas.parity import DEFAULT_THRESHOLDS

    start = time.perf_counter()
    tiers = [TIERS[name] if isinstance(name, str) else name for name in tiers]
    count = max_images or DEFAULT_MAX_IMAGES
    pixels, reference = pixels[:count], np.asarray(reference)[:count]
    paths = [Path(artifact).resolve() for artifact in artifacts]
    runners = {path: load_runner(path) for path in paths}
    arm = any(tier.machine == "aarch64" for tier in tiers)
    env = prepare_env(cache_dir, progress=progress, onnxruntime=arm)
    with tempfile.TemporaryDirectory(prefix="spnas-tiers-") as tmp:
        tmp = Path(tmp)
        inputs = {}
        for index, (path, runner) in enumerate(runners.items()):
            inputs[path] = tmp / f"inputs-{index}.npy"
            np.save(inputs[path], runner.prepare(pixels))

        def run(tier: Tier | None) -> dict:
            label = tier.name if tier else "native"
            runnable = [path for path in paths if not tier or (tier.machine, path.suffix) not in UNAVAILABLE]
            jobs = [{"model": str(path), "inputs": str(inputs[path]), "outputs": str(tmp / f"{label}-{i}.npy")}
                    for i, path in enumerate(runnable)]
            (tmp / f"{label}.json").write_text(json.dumps(jobs))
            script = [str(TIER_RUNNER), str(tmp / f"{label}.json")]
            tier_start = time.perf_counter()
            if tier is None:
                summary = run_jobs([sys.executable, *script], jobs, "native run")
            elif tier.machine == "x86_64":
                summary = run_jobs([str(env.qemu_x86), "-cpu", tier.qemu_cpu, sys.executable, *script], jobs,
                                   f"emulated {tier.name}")
            else:
                summary = run_jobs(env.command(tier.qemu_cpu, *script), jobs, f"emulated {tier.name}",
                                   env.environment())
            if tier:
                progress(f"cpu tiers: {tier.name}: {len(jobs)} artifact(s) in {time.perf_counter() - tier_start:.0f}s")
            return summary

        progress(f"cpu tiers: {len(paths)} artifact(s) on {len(pixels)} images natively and on "
                 f"{', '.join(tier.name for tier in tiers)} (emulated; minutes, not latency) ...")
        with ThreadPoolExecutor(max_workers=max(1, min(len(tiers) + 1, os.cpu_count() or 1))) as pool:
            summaries = list(pool.map(run, [None, *tiers]))
    native, emulated = summaries[0], dict(zip([tier.name for tier in tiers], summaries[1:], strict=True))
    blocks = {}
    for path, runner in runners.items():
        gate = (thresholds or DEFAULT_THRESHOLDS).get(runner.precision) or Thresholds()
        base = native["models"][str(path)]
        base_logits = logits_of(base)
        simulation = (simulations or {}).get(str(path))
        native_block = {"vs_reference": number_metrics(compare(reference, base_logits))}
        if simulation is not None:
            simulation = np.asarray(simulation)[:count]
            native_block["vs_simulation_sqnr_db"] = to_json_number(sqnr_db(simulation, base_logits))
            native_block["simulation_vs_reference_sqnr_db"] = sqnr_db(reference, simulation)
        runs, failures = [], []
        for tier in tiers:
            entry = {"tier": tier.name, "machine": tier.machine, "qemu_cpu": tier.qemu_cpu, "isa": tier.isa}
            reason = UNAVAILABLE.get((tier.machine, path.suffix))
            if reason:
                runs.append({**entry, "skipped": reason})
                continue
            facts = emulated[tier.name]["models"][str(path)]
            logits = logits_of(facts)
            entry.update({
                "runtime": {key: facts[key] for key in ("litert", "onnxruntime", "executorch") if key in facts},
                "emulated_seconds_per_image": round(facts["seconds_per_input"], 2),
                "vs_native": {**compare_outputs(facts["outputs"], base["outputs"]),
                              "sqnr_db": to_json_number(sqnr_db(base_logits, logits))},
                "vs_reference": number_metrics(compare(reference, logits))})
            if simulation is not None:
                entry["vs_simulation_sqnr_db"] = to_json_number(sqnr_db(simulation, logits))
            entry["failures"] = tier_failures(entry, native_block, runner.precision, gate)
            failures += [f"{tier.name}: {failure}" for failure in entry["failures"]]
            runs.append(entry)
        blocks[str(path)] = {
            "precision": runner.precision, "n_images": len(pixels), "native": native_block, "tiers": runs,
            "environment": {"qemu": env.version_text, "host_machine": native["machine"],
                            "guests": {name: {key: summary[key] for key in ("machine", "python", "numpy")}
                                       for name, summary in emulated.items()}},
            "gate": {"thresholds": {k: v for k, v in vars(gate).items() if v is not None},
                     "int8_within_db_of_native_and_simulation": TIER_BUDGET_DB},
            "failures": failures, "passed": not failures, "seconds": round(time.perf_counter() - start, 1)}
    return blocks


def number_metrics(metrics: dict) -> dict:
    return {key: to_json_number(value) for key, value in metrics.items()}


TABLE_HEADERS = ["artifact", "tier", "ISA", "bit-exact vs native", "SQNR vs native", "SQNR vs sim", "SQNR vs ref",
                 "top1 vs ref", "gate"]


def summary_table(blocks: dict[str, dict]) -> str:
    """One row per (artifact, tier), the native run first, for the CLI to print under the parity table."""
    from spnas.console import format_table

    def db(value) -> str:
        return "-" if value is None else value if isinstance(value, str) else f"{value:.1f}"

    rows = []
    for path, block in blocks.items():
        native = block["native"]
        rows.append([Path(path).name, "native", "this CPU", "-", "-", db(native.get("vs_simulation_sqnr_db")),
                     db(native["vs_reference"]["sqnr_db"]), f"{native['vs_reference']['top1_agreement']:.3f}", "-"])
        for run in block["tiers"]:
            if "skipped" in run:
                rows.append([Path(path).name, run["tier"], run["isa"], "-", "-", "-", "-", "-", "not run"])
                continue
            rows.append([Path(path).name, run["tier"], run["isa"], "yes" if run["vs_native"]["bit_exact"] else "no",
                         db(run["vs_native"]["sqnr_db"]), db(run.get("vs_simulation_sqnr_db")),
                         db(run["vs_reference"]["sqnr_db"]), f"{run['vs_reference']['top1_agreement']:.3f}",
                         "FAILED" if run["failures"] else "passed"])
    return format_table(TABLE_HEADERS, rows)
