"""One latency chart across devices, formats and precisions (``spnas-bench --plot``).

Grouped horizontal bars: one group per artifact kind (format + precision, e.g. "tflite int8"),
one bar per setting it ran under (device, thread count, compute unit), each setting one colour
with one legend entry, so the same colour is the same phone in every group.  The bar is the
median (the mean where a source prints no median), the whisker reaches the p90 (else the max).
A failed measurement is written as "failed" where its bar would be.  The axis turns
logarithmic when the slowest bar is over 20x the fastest, so a host run and a phone NPU fit.

``chart_layout`` computes what is drawn, so tests check the grouping without reading pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

LOG_SPREAD = 20.0


@dataclass
class ChartLayout:
    """``values[s][g]``: series ``s``'s central latency in group ``g`` (None: not run or failed)."""

    groups: list[str]
    series: list[str]
    values: list[list[float | None]]
    whiskers: list[list[float | None]]
    failed: list[list[bool]]
    log_scale: bool


def series_label(record: dict) -> str:
    """Where and how it ran: ``"Google Pixel 8 · 4 threads · gpu"``; host runs are their thread count."""
    parts = [record["device_name"]] if record.get("device_name") else []
    threads = record.get("threads")
    if threads is not None:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    unit = record.get("compute_unit") or record.get("accelerator")
    if unit:
        parts.append(str(unit))
    return " · ".join(parts) or "run"


def group_labels(records: list[dict]) -> list[str]:
    """Format + precision per record; the artifact's name joins in when two artifacts of one kind would
    otherwise share a bar (e.g. two PyTorch references)."""
    kinds = [f"{r.get('format') or '?'} {r.get('precision') or '?'}" for r in records]
    seen: dict[tuple[str, str], str] = {}
    for record, kind in zip(records, kinds, strict=True):
        if seen.setdefault((series_label(record), kind), record["artifact"]) != record["artifact"]:
            return [f"{label}\n{r['artifact']}" for r, label in zip(records, kinds, strict=True)]
    return kinds


def chart_layout(records: list[dict]) -> ChartLayout:
    from spnas.bench import central_ms

    groups_of = group_labels(records)
    groups = list(dict.fromkeys(groups_of))
    series = list(dict.fromkeys(series_label(r) for r in records))
    values = [[None] * len(groups) for _ in series]
    whiskers = [[None] * len(groups) for _ in series]
    failed = [[False] * len(groups) for _ in series]
    for record, group in zip(records, groups_of, strict=True):
        s, g = series.index(series_label(record)), groups.index(group)
        value = central_ms(record)
        if record.get("status") == "failed" or value is None:
            failed[s][g] = record.get("status") == "failed"
            continue
        latency = record.get("latency_ms") or {}
        values[s][g] = value
        whiskers[s][g] = max(latency.get("p90") or latency.get("max") or value, value)
    present = [v for row in values for v in row if v]
    log_scale = bool(present) and max(present) > LOG_SPREAD * min(present)
    return ChartLayout(groups, series, values, whiskers, failed, log_scale)


def plot_latency(records: list[dict], path, title: str) -> None:
    """Write the chart as a PNG (atomically); matplotlib is imported only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.patches import Patch

    from spnas.io import atomic_path

    layout = chart_layout(records)
    n_series = len(layout.series)
    slots = [[s for s in range(n_series) if layout.values[s][g] or layout.failed[s][g]]
             for g in range(len(layout.groups))]
    positions, centres, y = {}, [], 0.0  # each group as tall as the bars it has, a gap between groups
    for g, members in enumerate(slots):
        for s in members:
            positions[s, g] = y
            y += 1.0
        centres.append(y - (len(members) + 1) / 2)
        y += 0.8
    figure, axes = plt.subplots(figsize=(9, max(2.5, 0.28 * y + 1.2)))
    colours = plt.get_cmap("tab10" if n_series <= 10 else "tab20")
    floor = min((v for row in layout.values for v in row if v), default=1.0)
    legend = []
    for s, label in enumerate(layout.series):
        drawn = [(positions[s, g], v, w) for g, (v, w) in enumerate(zip(layout.values[s], layout.whiskers[s],
                                                                         strict=True)) if v]
        axes.barh([p for p, _, _ in drawn], [v for _, v, _ in drawn], height=0.85, color=colours(s % 20),
                  xerr=[[0] * len(drawn), [w - v for _, v, w in drawn]], capsize=2, error_kw={"elinewidth": 0.8})
        legend.append(Patch(facecolor=colours(s % 20), label=label if drawn else f"{label} (failed)"))
        for position, value, whisker in drawn:
            axes.text(whisker, position, f" {value:.1f}", va="center", fontsize=7)
        for g, failed in enumerate(layout.failed[s]):
            if failed:
                axes.text(floor, positions[s, g], f" failed: {label}", va="center", fontsize=7, color="#b00020")
    axes.set_yticks(centres, layout.groups)
    axes.set_ylim(y - 0.3, -0.7)  # first group on top
    if layout.log_scale:  # one slow outlier must not flatten every other bar
        axes.set_xscale("log")
        plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(plain)
        axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("latency, ms (bar: median, whisker: p90 or max)" + (", log scale" if layout.log_scale else ""))
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                title="device · threads · unit", title_fontsize=8)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    plt.close(figure)
