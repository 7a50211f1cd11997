"""The tables of a report, as the CLIs print them and a CI comment shows them (``summary_markdown``)."""

from __future__ import annotations

from pathlib import Path

from spnas.console import format_table, markdown_table


def plan_table(plan: dict, entries: list[dict]) -> str:
    """The plan's simulation against float (pooled features and logits) and each lowering against it."""
    simulation = plan["simulation"]
    lines = [f"\nint8 plan ({plan['file']}), simulated on {plan['n_images']} images: pooled features "
             f"{simulation['pooled_sqnr_db']:.1f} dB (floor {plan['min_pooled_sqnr_db']:g}), logits "
             f"{simulation['logit_sqnr_db']:.1f} dB, top-1 {simulation['top1_agreement']:.3f}"]
    rows = [[Path(entry["path"]).name, _db(entry["vs_simulation"]["sqnr_db"]),
             f"{entry['vs_simulation']['top1_agreement']:.3f}", f"{entry['vs_simulation']['min_sqnr_db']:g}",
             "PASSED" if entry["vs_simulation"]["passed"] else "FAILED"]
            for entry in entries if "vs_simulation" in entry]
    if rows:
        lines.append(format_table(["artifact", "SQNR dB vs simulation", "top1", "floor dB", "gate"], rows))
    return "\n".join(lines)


def _db(value) -> str:
    return "inf" if isinstance(value, str) else f"{value:.1f}"


def agreement_table(agreement: dict) -> str:
    rows = [[Path(a).name, Path(b).name, _db(pair["sqnr_db"]), f"{pair['top1_agreement']:.3f}",
             f"{pair['min_sqnr_db']:g}", "PASSED" if pair["passed"] else "FAILED"]
            for pair in agreement["pairs"] for a, b in [pair["artifacts"]]]
    rule = (f"fixed floor {agreement['min_sqnr_db']:g} dB" if "min_sqnr_db" in agreement
            else f"floor: the pair's better SQNR vs float + {agreement['margin_db_over_sqnr_vs_float']:g} dB")
    return (f"\nint8 artifacts against each other (one quant plan; {rule}):\n"
            + format_table(["artifact", "artifact", "SQNR dB", "top1", "floor dB", "gate"], rows))


TABLE_HEADERS = ["artifact", "format", "precision", "n", "top1", "top5", "SQNR dB", "cosine", "max err", "rel err",
                 "size MB", "gate"]


def table_rows(entries: list[dict]) -> list[list[str]]:
    rows = []
    for entry in entries:
        parity = entry["parity"]
        sqnr = parity["sqnr_db"]
        rows.append([
            Path(entry["path"]).name, entry["format"], entry["precision"], str(parity["n_images"]),
            f"{parity['top1_agreement']:.3f}", f"{parity['top5_agreement']:.3f}",
            sqnr if isinstance(sqnr, str) else f"{sqnr:.1f}", f"{parity['cosine']:.5f}",
            f"{parity['max_abs_error']:.2e}", f"{parity['max_rel_error']:.1e}",
            f"{entry['size_bytes'] / 1e6:.2f}", entry["gate"]["status"].upper() if entry["passed"] is not None
            else entry["gate"]["status"],
        ])
    return rows


def summary_table(entries: list[dict]) -> str:
    return format_table(TABLE_HEADERS, table_rows(entries))


def results_tables(report) -> str:
    """The tables the CLIs print for a ``spnas.report.Report``: parity, and where the report has them, accuracy
    (``--val``), the int8 plan against its lowerings, the int8 pairs, and the accelerator verdicts."""
    from spnas.validation import accuracy_table

    entries = [artifact.to_dict() for artifact in report.artifacts]
    parts = [summary_table(entries)]
    if report.validation is not None:
        parts.append(accuracy_table(report.validation, entries))
    if report.int8_plan is not None:
        parts.append(plan_table(report.int8_plan, entries))
    if report.int8_agreement is not None:
        parts.append(agreement_table(report.int8_agreement))
    if any(entry.get("accelerators") for entry in entries):
        parts.append(verdict_table(entries))
    return "\n".join(parts)


def summary_markdown(entries: list[dict]) -> str:
    return markdown_table(TABLE_HEADERS, table_rows(entries))


def verdict_table(entries: list[dict]) -> str:
    """One row per artifact, one word per accelerator ("-": the format cannot go there)."""
    names = list(dict.fromkeys(name for entry in entries for name in entry.get("accelerators") or {}))
    rows = [[Path(entry["path"]).name, *(entry["accelerators"].get(name, {}).get("verdict", "-") for name in names)]
            for entry in entries if entry.get("accelerators")]
    return ("\naccelerators (static checks of the graph against each delegate's op list; a device run is the proof):\n"
            + format_table(["artifact", *names], rows))
