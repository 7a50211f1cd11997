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


def plot_latency(records: list[dict], path, title: str) -> None:
    """Horizontal bars of the central latency per artifact and thread count, whiskers to p90 (or max);
    a log axis when the spread is wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spnas.io import atomic_path

    labels = [f"{r['artifact']} ({r['threads']}t)" for r in records]
    values = [central_ms(r) or 0.0 for r in records]
    upper = [((r["latency_ms"].get("p90") or r["latency_ms"].get("max") or v) - v) for r, v in zip(records, values,
                                                                                                  strict=True)]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(records) + 1.5))
    axes.barh(range(len(records)), values, xerr=[[0] * len(records), upper], color="#4c72b0", capsize=3)
    axes.set_yticks(range(len(records)), labels)
    axes.invert_yaxis()
    if max(values) > 20 * max(min(values), 1e-9):  # one slow outlier must not flatten every other bar
        axes.set_xscale("log")
    axes.set_xlabel("latency, ms (bar: median, whisker: p90)")
    axes.set_title(title)
    for index, (value, whisker) in enumerate(zip(values, upper, strict=True)):
        axes.text(value + whisker, index, f"  {value:.1f}", va="center", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
