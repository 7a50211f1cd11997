"""``spnas-export --int8 --fallback auto``: when an int8 artifact fails its gate, keep the layers
where int8 loses the most signal in float, re-export and re-verify.

Layers are ranked from the format's ``explain`` (accumulated SQNR of each conv / FC output, graph
order) by how much SQNR drops from the layer before: a layer that merely inherits upstream error
is not worth keeping in float, the one that adds it is.  The first layer's drop is counted from
the best an 8-bit input can be (``INPUT_SQNR_DB``).  A few layers are added per round, for at
most ``MAX_ROUNDS`` rounds; only the final artifact is written, and its report entry records what
the float layers cost.

Keeping one layer in float removes its weight rounding, not the int8 rounding of its output
(the next int8 layer still needs it quantized), so single layers gain little (+0.9 dB at best on
the fixture weights, most within +-0.3 dB); adjacent float layers gain more.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from spnas.io import artifact_size, atomic_path
from spnas.quantize.plan import PLAN_FILE
from spnas.verify import evaluate

MAX_ROUNDS = 3
INPUT_SQNR_DB = 6.02 * 8 + 1.76  # SQNR of a full-scale signal quantized to 8 bits
EXPLAIN_IMAGES = 8
LATENCY_RUNS = 20


def worst_layers(explained: list[dict], kept: list[str], count: int) -> list[str]:
    """The ``count`` layers not in ``kept`` with the largest SQNR drop from the previous layer, worst first."""
    drops = []
    previous = INPUT_SQNR_DB
    for layer in explained:
        drop = previous - layer["sqnr_db"]
        previous = layer["sqnr_db"]
        if layer["layer"] not in kept and np.isfinite(drop):
            drops.append((drop, layer["layer"]))
    return [name for _, name in sorted(drops, key=lambda item: -item[0])[:count]]


def fallback(module, ctx, entry: dict, pixels: np.ndarray, reference: np.ndarray, thresholds, console,
             layers_per_round: int = 3) -> dict:
    """Re-export a failed int8 artifact with more and more float layers until it passes ``thresholds``;
    if no round passes, the attempt with the best SQNR is kept.

    ``entry`` is the artifact's report entry (path relative to ``ctx.out_dir``); returns it updated
    with the final parity and a ``fallback`` block.  The artifact is replaced atomically at the end.
    """
    path = Path(ctx.out_dir) / entry["path"]
    kept: list[str] = []
    rounds = []
    current = path
    best = {"result": entry, "path": path, "details": entry["details"], "float_layers": []}
    with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".fallback.") as work:
        for number in range(1, MAX_ROUNDS + 1):
            with console.step(f"fallback round {number}: per-layer drift of {current.name}"):
                added = worst_layers(module.explain(current, pixels[:EXPLAIN_IMAGES], ctx.model), kept,
                                     layers_per_round)
            if not added:
                break
            kept += added
            round_ctx = dataclasses.replace(ctx, out_dir=Path(work) / f"round{number}", int8=True, fp16=False,
                                            options={**ctx.options, "float_layers": list(kept)})
            with console.step(f"fallback round {number}: int8 export with {len(kept)} float layer(s)"):
                artifact = next(a for a in module.export(round_ctx) if a.precision == "int8")
            result = evaluate(module.load(artifact.path), pixels, reference, thresholds=thresholds)
            current = artifact.path
            if result["passed"] or result["parity"]["sqnr_db"] > best["result"]["parity"]["sqnr_db"]:
                best = {"result": result, "path": current, "details": artifact.details, "float_layers": list(kept)}
            parity = result["parity"]
            rounds.append({"round": number, "added": added, "sqnr_db": parity["sqnr_db"],
                           "top1_agreement": parity["top1_agreement"], "passed": result["passed"]})
            print(f"fallback round {number}: float {', '.join(added)} -> SQNR {parity['sqnr_db']:.1f} dB, "
                  f"top-1 {parity['top1_agreement']:.3f}, {'PASSED' if result['passed'] else 'FAILED'}")
            if result["passed"]:
                break
        if best["path"] == path:
            return {**entry, "fallback": {"rounds": rounds, "float_layers": [], "kept_first_attempt": True}}
        with console.step(f"fallback: latency of {path.name} before / after ({LATENCY_RUNS} interleaved runs)"):
            latency_before, latency_after = interleaved_latency(module, [path, best["path"]], pixels[:1])
        with atomic_path(path) as tmp:
            shutil.move(best["path"], tmp)
        plan = best["path"].parent / PLAN_FILE  # the kept attempt's plan, with its float layers
        if plan.is_file():
            with atomic_path(Path(ctx.out_dir) / PLAN_FILE) as tmp:
                shutil.move(plan, tmp)
    result = best["result"]
    block = {
        "rounds": rounds,
        "float_layers": best["float_layers"],
        "first_attempt": {"parity": entry["parity"], "gate": entry["gate"]},
        "size_bytes": {"before": entry["size_bytes"], "after": artifact_size(path)},
        "latency_ms": {"before": latency_before, "after": latency_after,
                       "how": f"median of {LATENCY_RUNS} single-image invokes at 1 thread, before/after interleaved"},
    }
    return {**entry, "size_bytes": block["size_bytes"]["after"], "parity": result["parity"], "gate": result["gate"],
            "passed": result["passed"], "details": best["details"], "fallback": block}


def interleaved_latency(module, paths: list[Path], image: np.ndarray, runs: int = LATENCY_RUNS) -> list[float]:
    """Median ms of single-image invokes of each artifact at 1 thread, alternating so load noise hits all alike."""
    runners = [module.load(path, num_threads=1) for path in paths]
    prepared = [runner.prepare(image) for runner in runners]
    for runner, inputs in zip(runners, prepared, strict=True):
        runner.invoke(inputs)  # warm-up: first invoke plans and packs weights
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for runner, inputs, samples in zip(runners, prepared, times, strict=True):
            start = time.perf_counter()
            runner.invoke(inputs)
            samples.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(samples) for samples in times]
