"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that read outside input, for minutes per target.

    python benchmarks/fuzz.py                      # every target, 600 s each, in parallel
    python benchmarks/fuzz.py --targets adb --seconds 60

The targets and their contracts are ``tests/fuzz_targets.py`` (``tests/test_fuzz.py`` runs them
under hypothesis with a small budget). Each target runs in its own process, seeded with valid
inputs, with spnas (and, for images, Pillow's Python plugins) instrumented for coverage. A
contract violation stops that target and leaves the input under ``benchmarks/results/fuzz-crashes/``;
anything found is fixed, gets a regression test and moves to ``tests/data/fuzz/`` as a seed.
Writes ``benchmarks/results/fuzz.json`` (merged per target): runs, exec/s, coverage and findings,
with the CPU model. Needs ``pip install atheris`` (the ``fuzz`` extra).
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
from datetime import date
from pathlib import Path

from shared_data import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CRASHES = RESULTS / "fuzz-crashes"
INSTRUMENTED = {"adb": ("spnas",), "report": ("spnas",), "image": ("spnas", "PIL")}
FINAL_LINE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def child(name: str, seconds: int, corpus: Path) -> None:
    """Run one target under libFuzzer until the time is up (or a contract breaks)."""
    import atheris

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    with atheris.instrument_imports(include=list(INSTRUMENTED[name])):
        import fuzz_targets

        import spnas.bench.adb  # noqa: F401  (instrumented before the target imports it)
        import spnas.intake  # noqa: F401
        import spnas.preprocess  # noqa: F401
        import spnas.report  # noqa: F401
        if name == "image":
            from PIL import Image

            Image.init()  # import every format plugin inside the instrumentation
    target = fuzz_targets.TARGETS[name]
    for index, seed in enumerate(fuzz_targets.seeds(name)):
        (corpus / f"seed-{index}").write_bytes(seed)
    CRASHES.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-print_final_stats=1", "-timeout=20",
                   "-rss_limit_mb=4096", f"-artifact_prefix={CRASHES}/{name}-", str(corpus)], target)
    atheris.Fuzz()


def run_target(name: str, seconds: int) -> subprocess.Popen:
    corpus = Path(tempfile.mkdtemp(prefix=f"spnas-fuzz-{name}-"))
    log = open(corpus.parent / f"{corpus.name}.log", "w")  # noqa: SIM115 (closed by the caller via the process)
    return subprocess.Popen([sys.executable, __file__, "--child", name, "--seconds", str(seconds), "--corpus",
                             str(corpus)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def summarize(name: str, log_path: Path, returncode: int, seconds: int, elapsed: float) -> dict:
    text = log_path.read_text(errors="replace")
    final = FINAL_LINE.findall(text)
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
    runs = int(stats.get("number_of_executed_units", final[-1][0] if final else 0))
    findings = re.findall(r"Test unit written to (\S+)", text)
    error = next((line for line in text.splitlines() if line.startswith(("AssertionError", "=== Uncaught"))), None)
    return {"target": name, "fuzzing_seconds": seconds, "wall_seconds": round(elapsed, 1), "runs": runs,
            "exec_per_s": int(stats["average_exec_per_sec"]) if "average_exec_per_sec" in stats else None,
            "coverage": int(final[-1][1]) if final else None, "features": int(final[-1][2]) if final else None,
            "corpus": int(final[-1][3]) if final else None, "exit_code": returncode,
            "earlier_findings": earlier_findings(name),
            "findings": [{"input": str(Path(f).relative_to(ROOT)) if Path(f).is_relative_to(ROOT) else f,
                          "error": error} for f in findings]}


def earlier_findings(name: str) -> list[str]:
    """Inputs earlier runs found, fixed and kept as seeds (each has a regression test in tests/test_fuzz.py)."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests" / "data" / "fuzz").glob(f"{name}-*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="adb,report,image")
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, Path(args.corpus))
        return 0
    names = args.targets.split(",")
    start = time.monotonic()
    processes = {name: run_target(name, args.seconds) for name in names}
    results = []
    for name, process in processes.items():
        process.wait()
        log_path = Path(process.args[-1]).parent / f"{Path(process.args[-1]).name}.log"
        results.append(summarize(name, log_path, process.returncode, args.seconds, time.monotonic() - start))
        print(json.dumps(results[-1]))
    document = {"date": date.today().isoformat(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                "load_average_at_end": os.getloadavg(), "atheris": _version("atheris"),
                "note": "targets ran in parallel, each in its own process, on a machine shared with other jobs; "
                        "exec/s is therefore a floor", "targets": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "fuzz.json"
    earlier = json.loads(path.read_text()).get("targets", []) if path.is_file() else []
    document["targets"] = [r for r in earlier if r["target"] not in names] + results  # other targets' last runs
    path.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(not r["findings"] and r["exit_code"] == 0 for r in results) else 1


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
