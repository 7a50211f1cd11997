"""Wall time of ``spnas-export --format all --int8`` with 200 calibration images, and where it goes.

    python benchmarks/export_time.py                          # --executorch-int8 plan (default) and pt2e
    python benchmarks/export_time.py --flows plan

Runs the CLI as a user does (fixture weights, ``imagenet-sample``, ``--num-calib 200``, the default
50 parity images) once per ExecuTorch int8 flow, timestamps every ``spnas:`` progress line as it
arrives, and records the wall time, the CLI's own step timings (``...: done in Xs``: each format's
export, each artifact's parity), the time from each progress line to the next (the stages inside a
format's export: the plan, each lowering), the run's peak RSS and CPU seconds (user + system of the CLI
and its children, e.g. ExecuTorch's fp32 lowering worker: less sensitive to other load than wall time),
the CPU model, core count and the load average before and after.  The machine may be shared: compare
flows within one file, not across runs.
Writes ``benchmarks/results/export_time.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import SHARED_DATA  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "export_time.json"
STEP = re.compile(r"^(?P<step>.*): done in (?P<seconds>[0-9.]+)s$")
TARGET_SECONDS = 60.0
QUIET_LOAD = 0.5  # 1-minute load average above which other work was running when the export started


def load_average() -> list[float]:
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def timed_export(flow: str, out: Path) -> dict:
    """One CLI run: wall time, step timings, the progress timeline and peak RSS."""
    command = [sys.executable, "-m", "spnas.cli.export", "--format", "all", "--int8",
               "--weights", str(SHARED_DATA / "spnasnet_100_fixture.safetensors"),
               "--calib", str(SHARED_DATA / "imagenet-sample"), "--num-calib", "200",
               "--executorch-int8", flow, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load_before = load_average()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    timeline = []
    for line in process.stderr:
        if line.startswith("spnas: "):
            timeline.append((round(time.perf_counter() - start, 1), line.removeprefix("spnas: ").rstrip()))
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    steps = {match["step"]: float(match["seconds"]) for _, message in timeline if (match := STEP.match(message))}
    gaps = [{"from_s": t, "seconds": round(next_t - t, 1), "stage": message}
            for (t, message), (next_t, _) in zip(timeline, timeline[1:], strict=False) if not STEP.match(message)]
    return {"flow": flow, "exit_code": process.returncode, "wall_seconds": round(wall, 1),
            "within_target": wall <= TARGET_SECONDS, "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "load_average_before": load_before, "load_average_after": load_average(),
            "contended": load_before[0] > QUIET_LOAD,
            "steps_seconds": steps, "stages_seconds": gaps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", nargs="+", choices=["plan", "pt2e"], default=["plan", "pt2e"])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from spnas.machine import machine_facts

    run = {"machine": machine_facts(), "command": "spnas-export --format all --int8 --num-calib 200 (fixture weights, "
           "imagenet-sample, 50 parity images)", "target_seconds": TARGET_SECONDS, "runs": []}
    for flow in args.flows:
        with tempfile.TemporaryDirectory() as tmp:
            result = timed_export(flow, Path(tmp) / "exports")
        run["runs"].append(result)
        print(f"--executorch-int8 {flow}: {result['wall_seconds']:.0f} s wall (exit {result['exit_code']}), "
              f"{result['cpu_seconds']:.0f} CPU s, peak RSS {result['peak_rss_mb']} MB, "
              f"load {result['load_average_before'][0]:.1f} -> "
              f"{result['load_average_after'][0]:.1f}", flush=True)
        for step, seconds in result["steps_seconds"].items():
            print(f"  {seconds:6.1f} s  {step}")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(run, indent=1) + "\n")  # after each flow: a long run keeps what it has
    return 0


if __name__ == "__main__":
    sys.exit(main())
