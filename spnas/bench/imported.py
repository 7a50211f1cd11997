"""``spnas-bench --import``: reports measured elsewhere, read back into one report.

Reads the JSON documents spnas-bench writes (``mode`` host, adb, ai-hub, and import itself) and
the Android demo app's (``mode`` android-app: ``BenchmarkReport.kt``, from the Benchmark screen
or the instrumented run on a device farm), checks each against its schema, and gives every
record a ``device_name`` (host: its CPU; adb and app: manufacturer and model) and a ``source``
(file and mode), so a host run, an AI Hub fleet and a Firebase Test Lab phone are tabulated,
ratioed and plotted together.  Every file is read and checked before anything is printed or
written; a file that is not such a report is one line naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from spnas.errors import SpnasError

MODES = ("host", "adb", "ai-hub", "android-app", "import")
APP_SUFFIX = " (app)"  # the demo app's in-process timing is not benchmark_model's on the same phone
# The exact record of BenchmarkReport.records (android_demo/.../core/BenchmarkReport.kt).
APP_RECORD_KEYS = ("artifact", "path", "format", "precision", "threads", "runtime", "accelerator", "size_bytes",
                   "latency_ms", "preprocess_ms", "warmup_runs", "peak_rss_mb", "ratio_vs_first")


class ReportError(SpnasError):
    """A file given to --import that is not a report this reader knows."""


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_latency(latency, where: str) -> None:
    from spnas.bench import LATENCY_KEYS

    if not isinstance(latency, dict):
        raise ReportError(f"{where} is not an object")
    for key in LATENCY_KEYS:
        value = latency.get(key)
        if value is not None and not _number(value):
            raise ReportError(f"{where}.{key} is {value!r}, not a number")


def check_record(record, where: str, mode: str) -> None:
    if not isinstance(record, dict):
        raise ReportError(f"{where} is not an object")
    required = APP_RECORD_KEYS if mode == "android-app" else ("artifact", "format", "precision", "threads",
                                                              "latency_ms")
    missing = [key for key in required if key not in record]
    if missing:
        raise ReportError(f"{where} has no {missing[0]!r}")
    for key in ("artifact", "format", "precision"):
        if not isinstance(record[key], str):
            raise ReportError(f"{where}.{key} is {record[key]!r}, not a string")
    threads = record["threads"]
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ReportError(f"{where}.threads is {threads!r}, not a thread count")
    _check_latency(record["latency_ms"], f"{where}.latency_ms")
    if mode == "android-app" and record["preprocess_ms"] is not None:
        _check_latency(record["preprocess_ms"], f"{where}.preprocess_ms")
    if record.get("status", "ok") not in ("ok", "failed"):
        raise ReportError(f"{where}.status is {record['status']!r}, not 'ok' or 'failed'")
    if mode in ("ai-hub", "import") and not isinstance(record.get("device_name"), str):
        raise ReportError(f"{where} has no device_name")


def read_report(path: Path) -> dict:
    """The parsed, checked document; any problem is a one-line ReportError naming ``path``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"--import {path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ReportError(f"--import {path}: not a JSON report (not UTF-8 text)") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"--import {path}: not a JSON report ({exc.msg} at line {exc.lineno} column "
                          f"{exc.colno})") from exc
    try:
        if not isinstance(document, dict) or "mode" not in document:
            raise ReportError("not a spnas-bench or Android demo report (no \"mode\")")
        mode = document["mode"]
        if mode == "pixel1":
            raise ReportError("a --target pixel1 prediction, not a measurement; nothing to import")
        if mode not in MODES:
            raise ReportError(f"unknown report mode {mode!r} (expected one of {', '.join(MODES)})")
        results = document.get("results")
        if not isinstance(results, list) or not results:
            raise ReportError("\"results\" is missing or empty")
        if mode in ("adb", "android-app") and not isinstance(document.get("device"), dict) and not all(
                isinstance(r, dict) and "device_name" in r for r in results):
            raise ReportError("\"device\" is missing")
        for index, record in enumerate(results):
            check_record(record, f"results[{index}]", mode)
    except ReportError as exc:
        raise ReportError(f"--import {path}: {exc}") from None
    return document


def device_name(document: dict, record: dict) -> str:
    """The name a record is charted and tabulated under."""
    from spnas.bench.adb import adb_device_name

    if record.get("device_name"):
        return record["device_name"]
    if document["mode"] == "host":
        machine = document.get("machine") or {}
        return f"host {machine.get('cpu_model') or machine.get('machine') or '?'}"
    name = adb_device_name(document["device"])
    return name + APP_SUFFIX if document["mode"] == "android-app" else name


def import_reports(paths: list[Path]) -> dict:
    """Every file's records, in the order given, normalised into one document (``mode`` import)."""
    from spnas.bench import add_ratios
    from spnas.version import __version__

    documents = [(path, read_report(path)) for path in paths]
    records, sources = [], []
    for path, document in documents:
        sources.append({"file": str(path), "mode": document["mode"], "spnas_version": document.get("spnas_version"),
                        "results": len(document["results"])})
        for record in document["results"]:
            normalised = {**record, "device_name": device_name(document, record)}
            normalised.setdefault("status", "ok")
            normalised.setdefault("source", {"file": str(path), "mode": document["mode"]})
            if "device" not in normalised and isinstance(document.get("device") or document.get("machine"), dict):
                normalised["device"] = document.get("device") or document["machine"]
            records.append(normalised)
    add_ratios(records, key=lambda r: (r["device_name"], r["threads"], r.get("compute_unit") or r.get("accelerator")))
    return {"spnas_version": __version__, "mode": "import", "sources": sources, "results": records}
