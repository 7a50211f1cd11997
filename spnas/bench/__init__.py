"""Latency: host runtimes, the paper's Pixel 1 table, and phones over adb, in one JSON shape.

Every measurement, wherever it comes from, is one record::

    {"artifact", "format", "precision", "threads", "runtime", "size_bytes",
     "latency_ms": {"n_runs", "mean", "median", "p90", "min", "max", "std"},
     "peak_rss_mb", "ratio_vs_first", ...source-specific fields}

so a host run and a phone run can be tabulated, plotted and compared by the same code.
A statistic a source does not report (``benchmark_model`` prints no p90) is ``None``.
"""

from __future__ import annotations

import math

import numpy as np

LATENCY_KEYS = ("n_runs", "mean", "median", "p90", "min", "max", "std")


def summarize(samples_ms) -> dict:
    """Latency statistics of one artifact's timed runs (milliseconds); std is the population std."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("no timed runs")
    return {"n_runs": int(samples.size), "mean": float(samples.mean()), "median": float(np.median(samples)),
            "p90": float(np.percentile(samples, 90)), "min": float(samples.min()), "max": float(samples.max()),
            "std": float(samples.std())}


def central_ms(record: dict) -> float | None:
    """The figure ratios and charts use: the median, else the mean (old benchmark_model prints no median)."""
    latency = record.get("latency_ms") or {}
    value = latency.get("median")
    return value if value is not None else latency.get("mean")


def add_ratios(records: list[dict], key=lambda record: record["threads"]) -> None:
    """``ratio_vs_first``: each record's central latency over the first measured artifact's with the same
    ``key`` (the thread count; for a fleet, device and thread count)."""
    first_by_key: dict = {}
    for record in records:
        value = central_ms(record)
        first = first_by_key.setdefault(key(record), value) if value is not None else None
        record["ratio_vs_first"] = value / first if value is not None and first else None


def fmt_ms(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def results_table(records: list[dict]) -> str:
    from spnas.console import format_table

    fleet = any("device_name" in record for record in records)  # several devices: one row each
    rows = []
    for record in records:
        latency = record["latency_ms"]
        ratio = record.get("ratio_vs_first")
        size = record.get("size_bytes")
        rss = record.get("peak_rss_mb")
        threads = record.get("threads")
        row = [record["artifact"], "-" if threads is None else str(threads), fmt_ms(latency.get("median")),
               fmt_ms(latency.get("mean")), fmt_ms(latency.get("p90")), fmt_ms(latency.get("min")),
               fmt_ms(latency.get("max")), fmt_ms(latency.get("std")), str(latency.get("n_runs") or "-"),
               "-" if ratio is None else f"{ratio:.2f}x", "-" if rss is None else f"{rss:.0f}",
               "-" if size is None else f"{size / 1e6:.2f}"]
        if fleet:
            row = [record.get("device_name", "-"), *row, record.get("status", "ok").upper()]
        rows.append(row)
    headers = ["artifact", "threads", "median ms", "mean ms", "p90 ms", "min ms", "max ms", "std ms", "runs",
               "vs first", "peak RSS MB", "size MB"]
    if fleet:
        headers = ["device", *headers, "status"]
    return format_table(headers, rows)

