"""Host latency through the runtimes a phone uses: LiteRT (XNNPACK), ONNX Runtime, ExecuTorch (XNNPACK), PyTorch eager.

Each (artifact, thread count) runs in its own worker process, for two reasons:

- peak RSS is per process (``getrusage`` ``ru_maxrss`` only grows), so it is attributable
  to one artifact only when that artifact is alone in its process;
- every runtime keeps its own thread pool, and none leaks into another's measurement.

The workers of one thread count stay alive together and are driven in interleaved rounds
(a block of runs each, in rotating order), so slow phases of a shared, noisy machine hit
every artifact alike and the ratios against the first artifact survive.  Only
``runner.invoke`` is timed; preprocessing (``runner.prepare``) is done once, before.
"""

from __future__ import annotations

import inspect
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from spnas.errors import SpnasError
from spnas.machine import machine_facts

PYTORCH = "pytorch"
RSS_METHOD = ("each artifact runs in its own freshly spawned worker process; peak_rss_mb is that process's peak "
              "resident set size after all runs (Linux /proc/self/status VmHWM, else getrusage ru_maxrss): Python + "
              "numpy + runtime + model; rss_delta_mb is that minus the peak just before the runtime was imported "
              "and the model loaded, i.e. runtime libraries + model + arenas")


@dataclass(frozen=True)
class BenchTarget:
    """An artifact file, or the PyTorch reference (``path`` None) built from ``weights``."""

    label: str
    format: str
    path: Path | None = None
    weights: str = "random"


def parse_targets(tokens: list[str], weights: str = "random") -> list[BenchTarget]:
    """Command-line artifacts -> targets; ``pytorch`` is the eager reference (latency does not depend on values)."""
    from spnas.export import format_of

    targets = []
    for token in tokens:
        if token == PYTORCH:
            label = PYTORCH if weights == "random" else f"{PYTORCH} ({Path(weights).name})"
            targets.append(BenchTarget(label, PYTORCH, None, weights))
            continue
        path = Path(token)
        if not path.exists():
            raise SpnasError(f"{path}: no such artifact (or pass \"{PYTORCH}\" for the PyTorch reference)")
        fmt = format_of(path)
        if fmt == "coreml" and sys.platform != "darwin":
            raise SpnasError(f"{path}: CoreML artifacts run only on macOS")
        targets.append(BenchTarget(path.name, fmt, path))
    labels = [t.label for t in targets]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise SpnasError(f"artifact given twice: {duplicates[0]}")
    return targets


def bench_pixels(spec=None):
    """One real preprocessed photograph (uint8, 1xSxSx3, timm's default spec unless given) from the embedded set."""
    from spnas.images import EMBEDDED_DIR
    from spnas.intake import load_pixels, walk_images
    from spnas.preprocess import DEFAULT_SPEC

    return load_pixels(walk_images(EMBEDDED_DIR)[0], spec or DEFAULT_SPEC)[None]


def peak_rss_mb() -> float:
    """Peak RSS of this process.  VmHWM first: ru_maxrss survives fork and exec, so a spawned worker would
    report its parent's peak if the parent had been bigger."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def open_runner(target: BenchTarget, threads: int):
    """Load a target in this process with ``threads`` runtime threads."""
    if target.format == PYTORCH:
        import torch

        from spnas.create import create_model
        from spnas.reference import TorchRunner

        torch.set_num_threads(threads)
        return TorchRunner(create_model(target.weights))
    from spnas.export import format_module

    module = format_module(target.format)
    if "num_threads" not in inspect.signature(module.load).parameters:
        raise SpnasError(f"spnas.export.{target.format}.load does not take num_threads yet; cannot set threads")
    return module.load(target.path, num_threads=threads)


def worker_main(connection, target: BenchTarget, threads: int, warmup: int, pixels) -> None:
    """Worker process: load, warm up, then time blocks of ``invoke`` on request until told to stop."""
    try:
        baseline_mb = peak_rss_mb()
        runner = open_runner(target, threads)
        spec = getattr(runner, "spec", None)
        if spec is not None and pixels.shape[1] != spec.input_size:  # a fine-tune at its own input size
            pixels = bench_pixels(spec)
        prepared = runner.prepare(pixels)
        for _ in range(warmup):
            runner.invoke(prepared)
        connection.send(("ready", {"precision": getattr(runner, "precision", "fp32"),
                                   "size_bytes": target_size_bytes(target, runner)}))
        while True:
            command, count = connection.recv()
            if command == "stop":
                connection.send(("done", {"peak_rss_mb": peak_rss_mb(), "rss_delta_mb": peak_rss_mb() - baseline_mb}))
                return
            samples = []
            for _ in range(count):
                start = time.perf_counter_ns()
                runner.invoke(prepared)
                samples.append((time.perf_counter_ns() - start) / 1e6)
            connection.send(("samples", samples))
    except SpnasError as exc:  # already one line naming its file
        connection.send(("error", str(exc)))
    except Exception as exc:  # reported to the parent as one line; the worker has no terminal of its own
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        connection.send(("failure", f"{type(exc).__name__}: {message}"))


def death(exitcode: int | None) -> str:
    """A worker that died without a word: a native crash in the runtime is named by its signal."""
    import signal

    if exitcode is not None and exitcode < 0:
        return (f"the runtime crashed ({signal.Signals(-exitcode).name}) loading or running it; the file is corrupt "
                "or not one spnas can run")
    return f"benchmark worker died (exit code {exitcode})"


class Worker:
    def __init__(self, context, target: BenchTarget, threads: int, warmup: int, pixels):
        self.target = target
        self.connection, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, target, threads, warmup, pixels),
                                       daemon=True)
        self.process.start()
        child.close()

    def receive(self, expected: str):
        try:
            kind, payload = self.connection.recv()
        except EOFError as exc:
            self.process.join(timeout=10)
            raise SpnasError(f"{self.target.label}: {death(self.process.exitcode)}") from exc
        if kind == "error":
            raise SpnasError(payload)
        if kind == "failure":
            raise SpnasError(f"{self.target.label}: {payload}")
        if kind != expected:
            raise SpnasError(f"{self.target.label}: benchmark worker protocol error ({kind!r})")
        return payload

    def close(self) -> None:
        self.connection.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def round_sizes(runs: int, rounds: int) -> list[int]:
    """Split ``runs`` into ``rounds`` nearly equal blocks."""
    rounds = max(1, min(rounds, runs))
    return [runs // rounds + (1 if index < runs % rounds else 0) for index in range(rounds)]


def target_size_bytes(target: BenchTarget, runner) -> int:
    """File size of an artifact; for the PyTorch reference, the bytes of its state dict."""
    if target.path is not None:
        from spnas.io import artifact_size

        return artifact_size(target.path)
    return sum(t.numel() * t.element_size() for t in runner.model.state_dict().values())


def measure(targets: list[BenchTarget], threads: int, warmup: int, runs: int, rounds: int, progress) -> list[dict]:
    """Interleaved measurement of all targets at one thread count; records in target order."""
    from spnas.bench import summarize

    context = multiprocessing.get_context("spawn")
    pixels = bench_pixels()
    workers = []
    try:
        for target in targets:
            progress(f"[{threads} thread(s)] loading {target.label} and warming up ({warmup} runs)")
            workers.append(Worker(context, target, threads, warmup, pixels))
        meta = [worker.receive("ready") for worker in workers]
        samples = [[] for _ in workers]
        blocks = round_sizes(runs, rounds)
        for round_index, block in enumerate(blocks):
            order = [(round_index + offset) % len(workers) for offset in range(len(workers))]
            for index in order:
                workers[index].connection.send(("run", block))
                samples[index] += workers[index].receive("samples")
            progress(f"[{threads} thread(s)] round {round_index + 1}/{len(blocks)}: "
                     + ", ".join(f"{w.target.label} {sorted(s)[len(s) // 2]:.1f} ms" for w, s in
                                 zip(workers, samples, strict=True)))
        memory = []
        for worker in workers:
            worker.connection.send(("stop", 0))
            memory.append(worker.receive("done"))
    finally:
        for worker in workers:
            worker.close()
    records = []
    for target, info, timings, rss in zip(targets, meta, samples, memory, strict=True):
        records.append({"artifact": target.label, "path": str(target.path) if target.path else None,
                        "format": target.format, "precision": info["precision"], "threads": threads,
                        "runtime": RUNTIMES[target.format], "size_bytes": info["size_bytes"],
                        "latency_ms": summarize(timings), "warmup_runs": warmup,
                        "peak_rss_mb": round(rss["peak_rss_mb"], 1), "rss_delta_mb": round(rss["rss_delta_mb"], 1)})
    return records


RUNTIMES = {"tflite": "LiteRT (XNNPACK)", "onnx": "ONNX Runtime (CPU)", "coreml": "Core ML",
            "executorch": "ExecuTorch (XNNPACK)", PYTORCH: "PyTorch eager"}


def runtime_versions(targets: list[BenchTarget]) -> dict:
    from importlib import metadata

    packages = {"tflite": "ai-edge-litert", "onnx": "onnxruntime", "coreml": "coremltools", "executorch": "executorch",
                PYTORCH: "torch"}
    versions = {}
    for fmt in sorted({t.format for t in targets}):
        try:
            versions[packages[fmt]] = metadata.version(packages[fmt])
        except metadata.PackageNotFoundError:
            versions[packages[fmt]] = None
    return versions


def run_host(targets: list[BenchTarget], threads_list: list[int], warmup: int, runs: int, rounds: int,
             progress) -> dict:
    """The host benchmark's JSON document."""
    from spnas.bench import add_ratios
    from spnas.version import __version__

    records = []
    for threads in threads_list:
        records += measure(targets, threads, warmup, runs, rounds, progress)
    add_ratios(records)
    return {"spnas_version": __version__, "mode": "host", "machine": machine_facts(),
            "runtimes": runtime_versions(targets),
            "settings": {"threads": threads_list, "warmup_runs": warmup, "runs": runs,
                         "rounds": len(round_sizes(runs, rounds)),
                         "timed": "runner.invoke only (one image at the artifact's input size)",
                         "peak_rss_method": RSS_METHOD},
            "results": records}
