"""On-device latency: LiteRT's ``benchmark_model`` on the user's phone over adb.

The binary is the user's (it cannot be downloaded here).  Models and binary are pushed
to ``/data/local/tmp``; each run's text output is parsed into the same record as a host
run.  ``benchmark_model``'s output changed several times, and all known shapes are read:

- TF 1.x: ``Average inference timings in us: Warmup: W, Init: I, no stats: X``;
- TF 2.0-2.2 and the Android benchmark app: ``Average inference timings in us: Warmup: W,
  Init: I, Inference: X`` (the app appends ``Overall max resident set size = ... MB``);
- TF 2.3+ / LiteRT: ``Inference timings in us: Init: I, First inference: F, Warmup (avg): W,
  Inference (avg): X``, then ``Peak memory footprint (MB): init=.. overall=..`` (older) or
  ``Memory footprint delta from the start of the tool (MB): init=.. overall=..`` and
  ``Overall peak memory footprint (MB) via periodic monitoring: P``;
- per-phase statistics ``count=N first=F curr=C min=.. max=.. avg=.. std=..`` (newer ones add
  ``p5= median= p95=``; a constant phase prints ``count=N curr=C(all same)``);
- LiteRT's CompiledModel benchmark (``benchmark_litert_model``): a ``BENCHMARK RESULTS``
  block of ``Inference (avg): 71.45 ms (50 runs)``-style lines in milliseconds;
- any of these behind ``INFO:`` severity prefixes, ``[file.h:123]`` source tags or logcat
  line headers.

Every remote path in a device shell command is ``shlex.quote``d; local arguments (serial,
file names) go to ``adb`` as separate argv entries, never through a local shell.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from spnas.errors import SpnasError

REMOTE_DIR = "/data/local/tmp"
GETPROPS = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer",
            "board_platform": "ro.board.platform", "soc_model": "ro.soc.model", "abi": "ro.product.cpu.abi",
            "android_release": "ro.build.version.release", "sdk": "ro.build.version.sdk"}
# Every fact in one device shell round trip: "prop NAME=VALUE" lines, then "PATH KHZ" per CPU.
FACTS_SCRIPT = (f"for p in {' '.join(GETPROPS.values())}; do echo \"prop $p=$(getprop $p)\"; done; "
                "for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; "
                "do echo \"$f $(cat \"$f\" 2>/dev/null)\"; done")
TASKSET_MASK = re.compile(r"^(0x)?[0-9a-fA-F]+$")

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
_LOGCAT_HEADER = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEF]\s+[^:]*:\s?")
_SEVERITY = re.compile(r"^(?:INFO|WARNING|WARN|ERROR|VERBOSE|DEBUG|FATAL):\s?")
_SOURCE_TAG = re.compile(r"^\[[\w./-]+:\d+\]\s?")
_KEY_VALUE = re.compile(rf"(\w+)=({_NUMBER})")
_SUMMARY_CURRENT = re.compile(r"^Inference timings in us:\s*(.*)$")
_SUMMARY_LEGACY = re.compile(r"^Average inference timings in us:\s*(.*)$")
_SUMMARY_FIELD = re.compile(rf"([A-Za-z][A-Za-z ()]*?):\s*({_NUMBER})")
_COMPILED = re.compile(rf"^(Model initialization|Warmup \(first\)|Warmup \(avg\)|Inference \(avg\)|"
                       rf"Inference \(min\)|Inference \(max\)|Inference \(std\)|Init footprint|Overall footprint|"
                       rf"Peak memory):\s*({_NUMBER})(?:\s*(?:ms|MB))?(?:\s*\((\d+) runs\))?\s*$")
_INIT_SESSION = re.compile(rf"^Initialized session in ({_NUMBER})\s*ms\.?$")
_MODEL_SIZE = re.compile(rf"^The input model file size \(MB\):\s*({_NUMBER})$")
_FOOTPRINT = re.compile(rf"^(?:Peak memory footprint|Memory footprint delta from the start of the tool) \(MB\):\s*"
                        rf"init=({_NUMBER})\s+overall=({_NUMBER})$")
_PEAK_MONITOR = re.compile(rf"^Overall peak memory footprint \(MB\) via periodic monitoring:\s*({_NUMBER})$")
_APP_RSS = re.compile(rf"Overall max resident set size = ({_NUMBER}) MB")
_END_RSS = re.compile(r"^- VmRSS\s*:\s*(\d+) MB$")
# Lines that announce a result: if one of these does not parse, the output is not understood.
_RESULT_STARTS = ("Inference timings in us", "Average inference timings in us", "count=", "curr=",
                  "Inference (avg)", "Peak memory footprint", "Memory footprint delta",
                  "Overall peak memory footprint")


class BenchmarkOutputError(SpnasError):
    """benchmark_model printed something this parser does not understand."""


def strip_prefixes(line: str) -> str:
    """Remove logcat headers, ``INFO:``-style severities and ``[file.h:12]`` tags, in any order."""
    line = line.strip()
    previous = None
    while previous != line:
        previous = line
        for pattern in (_LOGCAT_HEADER, _SEVERITY, _SOURCE_TAG):
            line = pattern.sub("", line, count=1).strip()
    return line


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value


def _us_to_ms(value: float | None) -> float | None:
    return None if value is None else round(value / 1000.0, 4)


def parse_run_stats(line: str) -> dict:
    """``count=50 first=.. curr=.. min=.. max=.. avg=.. std=.. [p5= median= p95=]`` -> numbers (us)."""
    fields = {key: _number(value) for key, value in _KEY_VALUE.findall(line)}
    if "count" not in fields or (fields["count"] and "curr" not in fields):
        raise ValueError("")
    if "(all same)" in line or ("min" not in fields and fields["count"]):
        fields.update({key: fields["curr"] for key in ("min", "max", "avg", "median")})
        fields["std"] = 0.0
    if fields["count"] and "avg" not in fields:  # a cut or garbled line (found by tests/test_fuzz.py)
        raise ValueError(" (no avg)")
    return fields


def parse_summary(body: str) -> dict:
    fields = {name.strip(): _number(value) for name, value in _SUMMARY_FIELD.findall(body)}
    if not any(fields.get(key) is not None for key in ("Inference (avg)", "Inference", "no stats")):
        raise ValueError(" (no inference time in it)")
    return fields


def parse_benchmark_output(text: str) -> dict:
    """benchmark_model stdout+stderr -> the measurement fields of a result record (milliseconds, MB)."""
    run_stats, summary, compiled, memory, facts = [], None, {}, {}, {}
    output_format = None
    for raw_line in text.splitlines():
        line = strip_prefixes(raw_line)
        if not line:
            continue
        try:
            if line.startswith(("count=", "curr=")):
                run_stats.append(parse_run_stats(line))
            elif match := _SUMMARY_CURRENT.match(line):
                summary, output_format = parse_summary(match.group(1)), "tflite-current"
            elif match := _SUMMARY_LEGACY.match(line):
                summary = parse_summary(match.group(1))
                output_format = "tflite-legacy-no-stats" if "no stats" in summary else "tflite-legacy"
                if rss := _APP_RSS.search(line):
                    memory["max_rss_mb"] = _number(rss.group(1))
            elif match := _COMPILED.match(line):
                compiled[match.group(1)] = (_number(match.group(2)), match.group(3))
            elif match := _FOOTPRINT.match(line):
                kind = "footprint_delta" if line.startswith("Memory footprint delta") else "max_rss_delta"
                memory[f"init_{kind}_mb"], memory[f"overall_{kind}_mb"] = map(_number, match.groups())
            elif match := _PEAK_MONITOR.match(line):
                memory["peak_mb"] = _number(match.group(1))
            elif match := _END_RSS.match(line):
                memory["vm_rss_at_end_mb"] = _number(match.group(1))
            elif match := _INIT_SESSION.match(line):
                facts["init_ms"] = _number(match.group(1))
            elif match := _MODEL_SIZE.match(line):
                facts["model_size_mb"] = _number(match.group(1))
            elif line.startswith(_RESULT_STARTS):
                raise ValueError("")
        except ValueError as exc:
            raise BenchmarkOutputError(f"cannot parse benchmark_model output line {raw_line.strip()!r}{exc}") \
                from None
    if summary is None and "Inference (avg)" not in compiled:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "(no output)")
        raise BenchmarkOutputError(f"benchmark_model printed no result; last line: {last.strip()!r}")
    if "Inference (avg)" in compiled:
        output_format = "litert-compiled-model"
    timed = [stats for stats in run_stats if stats["count"]]  # a "count=0" block timed nothing
    record = _assemble(timed, summary or {}, compiled, memory, facts, output_format)
    if record["latency_ms"]["mean"] is None and record["latency_ms"]["median"] is None:  # found by fuzzing
        raise BenchmarkOutputError("benchmark_model output has no inference time in any form this parser knows")
    return record


def _assemble(run_stats, summary, compiled, memory, facts, output_format) -> dict:
    """Merge what the output said into one record; per-run statistics win over summary lines."""
    warmup_stats = run_stats[0] if len(run_stats) >= 2 else None
    inference_stats = run_stats[1] if len(run_stats) >= 2 else (run_stats[0] if run_stats else None)
    compiled_ms = {name: value for name, (value, _) in compiled.items()}
    inference_mean = _us_to_ms(summary.get("Inference (avg)", summary.get("Inference", summary.get("no stats"))))
    if inference_mean is None:
        inference_mean = compiled_ms.get("Inference (avg)")
    latency = {"n_runs": None, "mean": inference_mean, "median": None, "p90": None, "min": None, "max": None,
               "std": None}
    if inference_stats:
        latency.update({"n_runs": int(inference_stats["count"]), "mean": _us_to_ms(inference_stats.get("avg")),
                        "median": _us_to_ms(inference_stats.get("median")),
                        "min": _us_to_ms(inference_stats.get("min")), "max": _us_to_ms(inference_stats.get("max")),
                        "std": _us_to_ms(inference_stats.get("std"))})
    elif compiled:
        runs = compiled.get("Inference (avg)", (None, None))[1]
        latency.update({"n_runs": int(runs) if runs else None, "min": compiled_ms.get("Inference (min)"),
                        "max": compiled_ms.get("Inference (max)"), "std": compiled_ms.get("Inference (std)")})
    if compiled:  # LiteRT's footprints are deltas from the tool's start, like TF 2.3+'s
        memory.setdefault("init_footprint_delta_mb", compiled_ms.get("Init footprint"))
        memory.setdefault("overall_footprint_delta_mb", compiled_ms.get("Overall footprint"))
        memory.setdefault("peak_mb", compiled_ms.get("Peak memory"))
    init_us = summary.get("Init")
    warmup_avg = summary.get("Warmup (avg)", summary.get("Warmup"))
    compiled_warmup_runs = compiled.get("Warmup (avg)", (None, None))[1]
    return {
        "latency_ms": {key: None if value is None else round(value, 4) for key, value in latency.items()},
        "init_ms": _us_to_ms(init_us) if init_us is not None else compiled_ms.get("Model initialization",
                                                                                facts.get("init_ms")),
        "first_inference_ms": _us_to_ms(summary.get("First inference")) if "First inference" in summary
        else (compiled_ms.get("Warmup (first)") or _us_to_ms((warmup_stats or {}).get("first"))),
        "warmup_avg_ms": _us_to_ms(warmup_avg) if warmup_avg is not None else compiled_ms.get("Warmup (avg)"),
        "warmup_runs": int(warmup_stats["count"]) if warmup_stats else (
            int(compiled_warmup_runs) if compiled_warmup_runs else None),
        "memory_mb": {key: value for key, value in memory.items() if value is not None},
        "model_size_mb": facts.get("model_size_mb"),
        "output_format": output_format,
    }


class Adb:
    """A thin ``adb`` wrapper that talks to one device and turns failures into one-line errors."""

    def __init__(self, serial: str | None = None, executable: str | None = None, timeout: float = 600):
        self.executable = executable or shutil.which("adb")
        if not self.executable:
            raise SpnasError("adb not found on PATH; install Android SDK platform-tools and connect a phone with "
                             "USB debugging on")
        self.serial = serial
        self.timeout = timeout

    def argv(self, *args: str) -> list[str]:
        return [self.executable, *(["-s", self.serial] if self.serial else []), *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = self.argv(*args)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise SpnasError(f"adb timed out after {self.timeout:.0f}s: {shlex.join(command[1:])}") from exc
        if check and result.returncode != 0:
            message = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}")
            raise SpnasError(f"adb {shlex.join(command[1:])} failed: {message.splitlines()[-1]}")
        return result

    def shell(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("shell", command, check=check)

    def check_device(self) -> None:
        state = self.run("get-state", check=False)
        if state.returncode != 0 or state.stdout.strip() != "device":
            detail = (state.stderr.strip() or state.stdout.strip() or "no device").splitlines()[0]  # adb's reason
            who = f"device {shlex.quote(self.serial)}" if self.serial else "a device"
            raise SpnasError(f"adb cannot reach {who}: {detail} (check `adb devices`, or pass --serial)")

    def push(self, local: Path, remote: str) -> None:
        self.run("push", str(local), remote)

    def facts(self) -> dict:
        lines = self.shell(FACTS_SCRIPT, check=False).stdout.splitlines()
        props = dict(line[5:].split("=", 1) for line in lines if line.startswith("prop ") and "=" in line)
        facts = {name: props.get(prop, "").strip() or None for name, prop in GETPROPS.items()}
        if self.serial:
            facts["serial"] = self.serial
        frequencies = {}
        for line in lines:
            match = re.search(r"/(cpu\d+)/cpufreq/cpuinfo_max_freq\s+(\d+)\s*$", line)
            if match:
                frequencies[match.group(1)] = int(match.group(2)) / 1000  # kHz -> MHz
        facts["cpu_max_freq_mhz"] = dict(sorted(frequencies.items(), key=lambda item: int(item[0][3:])))
        return facts


def benchmark_command(binary: str, graph: str, threads: int, warmup: int, runs: int, taskset: str | None,
                      use_xnnpack: bool, extra_args: list[str]) -> str:
    """The device shell command line; every path and value is quoted for the device shell."""
    args = [binary, f"--graph={graph}", f"--num_threads={threads}",
            f"--use_xnnpack={'true' if use_xnnpack else 'false'}", f"--warmup_runs={warmup}", "--warmup_min_secs=0",
            f"--num_runs={runs}", "--min_secs=0", *extra_args]
    command = shlex.join(args)
    if taskset:
        command = f"taskset {shlex.quote(taskset)} {command}"
    return f"{command} 2>&1"


def check_taskset(mask: str | None) -> str | None:
    if mask is not None and not TASKSET_MASK.match(mask):
        raise SpnasError(f"--taskset {mask!r}: expected a hexadecimal CPU mask such as f0 (the big cores of an "
                         "8-core phone)")
    return mask


def check_inputs(artifacts: list[Path], binary: Path, taskset: str | None) -> None:
    check_taskset(taskset)
    for artifact in artifacts:
        if artifact.suffix.lower() != ".tflite" or not artifact.is_file():
            raise SpnasError(f"{artifact}: --adb runs .tflite files only (and the file must exist)")
    if not binary.is_file():
        raise SpnasError(f"--benchmark-binary {binary}: no such file (LiteRT's benchmark_model for the phone's ABI, "
                         "e.g. android_aarch64_benchmark_model)")


def run_adb(artifacts: list[Path], binary: Path, threads_list: list[int], warmup: int, runs: int, *,
            serial: str | None = None, taskset: str | None = None, use_xnnpack: bool = True,
            extra_args: list[str] | None = None, progress=print) -> dict:
    """Push, run and parse; returns the same JSON document as a host run, with ``device`` facts."""
    from spnas.bench import add_ratios
    from spnas.io import artifact_size
    from spnas.version import __version__

    check_inputs(artifacts, binary, taskset)
    adb = Adb(serial)
    adb.check_device()
    facts = adb.facts()
    soc = facts.get("soc_model") or facts.get("board_platform") or "?"
    progress(f"device: {facts.get('manufacturer') or ''} {facts.get('model') or '?'} ({soc}, "
             f"Android {facts.get('android_release')}, {facts.get('abi')})")
    remote_binary = f"{REMOTE_DIR}/{binary.name}"
    progress(f"pushing {binary.name} to {remote_binary}")
    adb.push(binary, remote_binary)
    adb.shell(f"chmod 755 {shlex.quote(remote_binary)}")
    remote_models = {}
    for artifact in artifacts:
        remote_models[artifact] = f"{REMOTE_DIR}/{artifact.name}"
        progress(f"pushing {artifact.name} to {remote_models[artifact]}")
        adb.push(artifact, remote_models[artifact])
    records = []
    for threads in threads_list:
        for artifact in artifacts:
            command = benchmark_command(remote_binary, remote_models[artifact], threads, warmup, runs, taskset,
                                        use_xnnpack, extra_args or [])
            progress(f"[{threads} thread(s)] {shlex.join(['adb', *adb.argv('shell', command)[1:]])}")
            result = adb.shell(command, check=False)
            output = result.stdout + result.stderr
            if result.returncode != 0:
                last = next((line for line in reversed(output.splitlines()) if line.strip()), "(no output)")
                raise SpnasError(f"benchmark_model failed on {artifact.name} (exit code {result.returncode}): "
                                 f"{last.strip()!r}")
            parsed = parse_benchmark_output(output)
            records.append({"artifact": artifact.name, "path": str(artifact), "format": "tflite",
                            "precision": precision_from_name(artifact.name), "threads": threads,
                            "runtime": "benchmark_model on device" + (" (XNNPACK)" if use_xnnpack else ""),
                            "size_bytes": artifact_size(artifact),
                            "peak_rss_mb": device_peak_mb(parsed["memory_mb"]),
                            **parsed, "command": command})
    add_ratios(records)
    return {"spnas_version": __version__, "mode": "adb", "device": facts,
            "settings": {"threads": threads_list, "warmup_runs": warmup, "runs": runs, "taskset": taskset,
                         "use_xnnpack": use_xnnpack, "binary": binary.name, "remote_dir": REMOTE_DIR,
                         "peak_rss_method": DEVICE_RSS_METHOD},
            "results": records}


DEVICE_RSS_METHOD = ("benchmark_model's own report, first available of: peak via periodic monitoring "
                     "(--report_peak_memory_footprint=true), max RSS (Android app), then the growth of the tool's max "
                     "RSS (older 'Peak memory footprint') or of its footprint (TF 2.3+, LiteRT) since it started")


def device_peak_mb(memory: dict) -> float | None:
    for key in ("peak_mb", "max_rss_mb", "overall_max_rss_delta_mb", "overall_footprint_delta_mb"):
        if memory.get(key) is not None:
            return memory[key]
    return None


def adb_device_name(facts: dict) -> str:
    """``"Google Pixel 8"`` from the device facts, with the serial when known so two phones of one model stay
    apart in a report."""
    name = " ".join(part for part in (facts.get("manufacturer"), facts.get("model")) if part) or "Android device"
    return f"{name} ({facts['serial']})" if facts.get("serial") else name


def precision_from_name(name: str) -> str:
    """spnas artifacts are named ``spnasnet_100_<precision>.tflite`` (or ``.onnx``); other files are "unknown"."""
    match = re.search(r"_(fp32|fp16|int8)\.(tflite|onnx)$", name)
    return match.group(1) if match else "unknown"
