"""Streaming validation at ImageNet-val scale: images/s, peak RSS and CPU of ``spnas.validation``.

Builds a synthetic 50,000-image ImageFolder in a temporary folder (hard links of the 800 shared
images under new names, one sub-folder per coarse8 class, nothing copied), exports the coarse8
fine-tune with ``--format all --int8`` (fp32 and int8 of each format, fp16 CoreML: 8 artifacts)
and runs the real ``--val`` machinery on it:

1. images/s per model: each runner alone, loaded as ``--val`` loads it, on the first
   ``--rate-images`` images (decoding excluded);
2. all 8 artifacts and the reference together, streamed by ``evaluate_all`` exactly as
   ``--val`` runs them, over the first ``--fraction`` images of the set: images/s, and the time
   50,000 images would take at that rate (extrapolated, said so in the JSON);
3. unless ``--rate-only``: the whole set streamed through one model (``--full-pass-model``) in
   the reference's slot: memory does not grow with the number of images, which is what this
   pass measures; peak RSS of this fresh process and of its decoding workers;
4. ``spnas-verify ARTIFACT --val`` on the 200 held-out rows for the int8 ``.tflite`` and the int8
   ``.mlpackage``, in turns (``--verify-turns``): their wall times with start-up and the ratio.

Records the CPU model and the load average.  Writes ``benchmarks/results/val_stream.json``.
Not a test: it takes tens of minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared_data import SHARED_DATA, cpu_model

RESULTS = Path(__file__).parent / "results" / "val_stream.json"


def synthetic_folder(root: Path, n: int) -> Path:
    """``n`` hard links (symlinks across file systems) of the shared images, named apart, per class folder."""
    sample = SHARED_DATA / "imagenet-sample"
    with open(sample / "coarse8.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[600:]  # not the calibration rows 0-599
    folder = root / "val"
    for i in range(n):
        row = rows[i % len(rows)]
        target = folder / row["label"] / f"{i:05d}_{row['file']}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(sample / row["file"], target)
        except OSError:
            target.symlink_to(sample / row["file"])
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="images in the synthetic folder (default 50000)")
    parser.add_argument("--rate-images", type=int, default=128, help="images per model for images/s (default 128)")
    parser.add_argument("--fraction", type=int, default=512, help="images streamed through all artifacts (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: spnas's)")
    parser.add_argument("--rate-only", action="store_true", help="skip the full streamed pass")
    parser.add_argument("--full-pass-model", default="spnasnet_100_int8.tflite",
                        help="the model streamed over the whole set (default spnasnet_100_int8.tflite)")
    parser.add_argument("--exports", metavar="DIR", help="use the coarse8 artifacts in DIR instead of exporting")
    parser.add_argument("--verify-turns", type=int, default=3,
                        help="interleaved spnas-verify --val runs per int8 artifact (default 3)")
    parser.add_argument("--measure", metavar="WORK", help=argparse.SUPPRESS)  # the clean measuring process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="spnas-val-stream-") as work:
        work = Path(work)
        calib = work / "calib"
        calib.mkdir()
        with open(SHARED_DATA / "imagenet-sample" / "coarse8.csv", newline="") as handle:
            for row in list(csv.DictReader(handle))[:600]:
                (calib / row["file"]).symlink_to(SHARED_DATA / "imagenet-sample" / row["file"])
        if not args.exports:
            subprocess.run([sys.executable, "-m", "spnas.cli.export", "--format", "all", "--int8", "--weights",
                            str(SHARED_DATA / "spnasnet_100_coarse8"), "--calib", str(calib), "--num-calib", "64",
                            "--num-parity", "16", "--out", str(work / "all"), "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
        start = time.perf_counter()
        synthetic_folder(work, args.n)
        built_s = time.perf_counter() - start
        # A fresh process measures, so its peak RSS and its children's (the decoding workers) are the streaming's.
        command = [sys.executable, __file__, "--measure", str(work), "--n", str(args.n), "--rate-images",
                   str(args.rate_images), "--fraction", str(args.fraction), "--full-pass-model", args.full_pass_model,
                   *(["--exports", args.exports] if args.exports else []),
                   *(["--rate-only"] if args.rate_only else []),
                   *(["--workers", str(args.workers)] if args.workers is not None else [])]
        load_before = os.getloadavg()
        measured = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        measured["verify_val"] = verify_val_times(Path(args.exports) if args.exports else work / "all", work,
                                                  args.verify_turns)
    quiet = load_before[0] < 0.75 * (os.cpu_count() or 1)
    document = {"machine": {"cpu": cpu_model(platform.processor()), "cores": os.cpu_count(),
                            "load_average_before": load_before, "load_average": os.getloadavg(),
                            "note": "quiet before measuring (1-minute load average under 0.75 per core); the load "
                                    "at the end is this benchmark's own" if quiet else
                                    "shared with other jobs while measured: timings are contended, compare ratios "
                                    "from one run, not absolute rates"},
                "n_images": args.n, "folder_build_s": round(built_s, 1), **measured}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0


def verify_val_times(exports: Path, work: Path, turns: int) -> dict:
    """Wall seconds of ``spnas-verify ARTIFACT --val`` on the 200 held-out rows (start-up included, as a user
    waits for it), the int8 ``.tflite`` and ``.mlpackage`` in turns; medians and their ratio."""
    import statistics

    folder = synthetic_folder(work / "verify", 200)  # rows 600-799, once each
    seconds: dict[str, list[float]] = {}
    for _ in range(turns):
        for name in ("spnasnet_100_int8.tflite", "spnasnet_100_int8.mlpackage"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "spnas.cli.verify", str(exports / name), "--val", str(folder),
                            "--quiet"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds.setdefault(name, []).append(round(time.perf_counter() - start, 2))
    median = {name: statistics.median(runs) for name, runs in seconds.items()}
    ratio = median["spnasnet_100_int8.mlpackage"] / median["spnasnet_100_int8.tflite"]
    return {"n_images": 200, "seconds": seconds, "median_seconds": median, "mlpackage_over_tflite": round(ratio, 2),
            "note": "spnas-verify ARTIFACT --val on coarse8.csv rows 600-799, wall time with start-up, run in turns"}


class ChildPeak:
    """The largest VmHWM among this process's children (the decoding workers), polled from /proc; ru_maxrss
    cannot tell, since a spawned child inherits its parent's figure through fork and exec."""

    def __init__(self):
        import threading

        self.peak_kb, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        me = os.getpid()
        while not self.stop.wait(0.5):
            for task in Path(f"/proc/{me}/task").iterdir():
                for child in (task / "children").read_text().split():
                    try:
                        for line in Path(f"/proc/{child}/status").read_text().splitlines():
                            if line.startswith("VmHWM:"):
                                self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                    except OSError:
                        continue

    def mb(self) -> int:
        self.stop.set()
        self.thread.join()
        return round(self.peak_kb / 1024)


def vm_hwm_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return -1


def measure(work: Path, args) -> dict:
    import spnas
    from spnas.export import load_runner
    from spnas.reference import TorchRunner
    from spnas.source import resolve_source
    from spnas.validation import RUNTIME_BATCH, evaluate_all, load_valset, stream

    source = resolve_source(str(SHARED_DATA / "spnasnet_100_coarse8"))
    reference = TorchRunner(spnas.create_model(source.checkpoint), source.spec)
    folder = Path(args.exports) if args.exports else work / "all"
    runners = {p.name: load_runner(p, batch=RUNTIME_BATCH) for p in sorted(folder.iterdir())
               if p.suffix in (".tflite", ".onnx", ".mlpackage", ".pte")}
    valset = load_valset(work / "val", source.class_names)
    rates, cpu = {}, {}
    _, pixels, _ = next(stream(valset, source.spec, batch=args.rate_images, workers=0))
    for name, runner in {"pytorch (reference)": reference, **runners}.items():
        runner.run(pixels[:8])  # warm-up
        start, start_cpu = time.perf_counter(), time.process_time()
        runner.run(pixels)
        rates[name] = round(len(pixels) / (time.perf_counter() - start), 1)
        cpu[name] = round((time.process_time() - start_cpu) / len(pixels), 4)
        print(f"{name}: {rates[name]} images/s, {cpu[name]} CPU s/image", file=sys.stderr)
    load_before = os.getloadavg()
    part = load_valset(work / "val", source.class_names)
    part.files, part.labels = part.files[:args.fraction], part.labels[:args.fraction]
    start, start_cpu = time.perf_counter(), time.process_time()
    evaluate_all(part, source.spec, reference, runners, workers=args.workers)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    rate = len(part) / seconds
    every = {"models": ["pytorch (reference)", *runners], "n_images": len(part), "seconds": round(seconds, 1),
             "images_per_s": round(rate, 2), "extrapolated_50000_images_h": round(50_000 / rate / 3600, 2),
             "cpu_s_per_image": round(cpu_seconds / len(part), 3),
             "idle_2_core_bound_images_per_s": round(2 * len(part) / cpu_seconds, 1),
             "load_average_before": load_before, "load_average_after": os.getloadavg(),
             "note": f"the first {len(part)} images of the set, timed; 50,000 extrapolated at that rate"}
    print(f"all artifacts: {every['images_per_s']} images/s", file=sys.stderr)
    start = time.perf_counter()
    decoded = 0
    for indices, _, _ in stream(valset, source.spec, batch=32, workers=args.workers):
        decoded += len(indices)
        if decoded >= args.rate_images * 4:
            break
    decode_rate = round(decoded / (time.perf_counter() - start), 1)
    full = None
    children = ChildPeak()
    if not args.rate_only:
        start = time.perf_counter()
        result = evaluate_all(valset, source.spec, runners[args.full_pass_model], {}, workers=args.workers,
                              progress=lambda m: print(m, file=sys.stderr, flush=True))
        seconds = time.perf_counter() - start
        full = {"model": args.full_pass_model, "n_images": result["validation"]["n_images"],
                "seconds": round(seconds, 1), "images_per_s": round(len(valset) / seconds, 1),
                "top1": result["validation"]["reference"]["top1"]}
    return {"workers": args.workers, "decode_images_per_s": decode_rate, "model_images_per_s": rates,
            "model_cpu_s_per_image": cpu,
            "all_artifacts": every, "full_pass": full,
            "peak_rss_mb": {"measuring_process": vm_hwm_mb(), "largest_decoding_worker": children.mb(),
                            "method": "VmHWM of a fresh process (models loaded, rates measured, full pass) and the "
                                      "largest VmHWM among its decoding workers, polled every 0.5 s"}}


if __name__ == "__main__":
    sys.exit(main())
