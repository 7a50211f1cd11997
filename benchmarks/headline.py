"""The project's headline table, from one command: every format and precision, latency, fidelity, Pixel 1.

    python benchmarks/headline.py            # the README's numbers (takes a few minutes)
    python benchmarks/headline.py --quick    # a smoke run: few images and runs, outputs in a temp folder

1. Exports every available format (ONNX, TFLite, CoreML, ExecuTorch; CoreML is timed only on
   macOS) in fp32, fp16 and int8 from the trained fixture weights, calibrated on labels.csv rows
   0-127 (ExecuTorch has no fp16 program; its int8 is its own default PT2E flow).
2. Int8/fp16 fidelity against the PyTorch reference on held-out rows 600-799 (the project's
   fidelity protocol): top-1 agreement, top-5, SQNR, cosine.
3. Host latency of all artifacts and the PyTorch reference at 1 and 2 threads, measured
   interleaved in one run (``spnas.bench.host``: one worker process per artifact and thread
   count), so the ratios survive a noisy machine; the load average before and after is recorded.
4. The Pixel 1 prediction from the authors' per-layer table (``spnas.bench.pixel1``).
5. The issues' targets as ratios of medians at the thread counts they name.

Writes ``benchmarks/results/headline.json``, ``headline_latency.png`` and
``headline_fidelity.png``, and prints a Markdown table for the README.  A missing format
module, a failed export or an absent table is skipped with a note, never fatal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared_data import SHARED_DATA  # noqa: E402

from spnas.errors import SpnasError  # noqa: E402

# (numerator, denominator, maximum ratio of medians, thread counts), from the issues
TARGETS = [(("tflite", "int8"), ("tflite", "fp32"), 0.45, (1,)), (("onnx", "int8"), ("onnx", "fp32"), 0.7, (1, 2)),
           (("executorch", "int8"), ("tflite", "int8"), 1.05, (1, 2))]
LITERT_TORCH_RESULTS = Path(__file__).resolve().parent / "results" / "litert_torch_compare.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per artifact and thread count")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; with --quick a "
                                                 "temporary folder, so a smoke run never replaces the real results)")
    parser.add_argument("--keep-artifacts", type=Path, metavar="DIR", help="export here instead of a temp folder")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 32 calibration / 40 evaluation images, 5 runs; not for the README")
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.quick:
        args.runs, args.warmup, args.rounds = 5, 1, 5
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "spnas-headline-quick" if args.quick else \
            ROOT / "benchmarks" / "results"
    return args


def export_all(model, calib_pixels, out_dir: Path, notes: list[str], log) -> list:
    """Every available format in every precision; a format that is absent or fails becomes a note."""
    from spnas.export import FORMATS, ExportContext, format_module
    from spnas.export.options import FormatOptions
    from spnas.preprocess import DEFAULT_SPEC

    artifacts = []
    for name in FORMATS:
        try:
            module = format_module(name)
        except (SpnasError, ImportError) as exc:
            notes.append(f"{name}: skipped, format module unavailable ({exc})")
            continue
        ctx = ExportContext(model=model, weights=model.weights_info, preprocessing=DEFAULT_SPEC,
                            calibration_pixels=calib_pixels, out_dir=out_dir, int8=True,
                            options=FormatOptions.of(fp16=True),
                            progress=lambda message, name=name: log(f"{name}: {message}"))
        log(f"exporting {name} (fp32, fp16, int8)")
        try:
            artifacts += module.export(ctx)
        except Exception as exc:  # a broken exporter must not hide the other formats' numbers
            notes.append(f"{name}: export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return artifacts


def fidelity(artifacts, eval_pixels, reference, log) -> dict:
    from spnas.export import format_module
    from spnas.parity import compare, to_json_number

    results = {}
    for artifact in artifacts:
        log(f"fidelity of {artifact.path.name} on {len(eval_pixels)} held-out images")
        logits = format_module(artifact.format).load(artifact.path).run(eval_pixels)
        results[artifact.path.name] = {k: to_json_number(v) for k, v in compare(reference, logits).items()}
    return results


def pixel1_prediction(notes: list[str]) -> dict | None:
    from spnas.bench.pixel1 import predict

    try:
        return predict().to_dict()
    except SpnasError as exc:
        notes.append(f"pixel1: skipped ({exc})")
        return None


def median_at(records, fmt, precision, threads):
    for record in records:
        if (record["format"], record["precision"], record["threads"]) == (fmt, precision, threads):
            return record["latency_ms"]["median"]
    return None


def check_targets(records, notes) -> list[dict]:
    checks = []
    for (num_fmt, num_prec), (den_fmt, den_prec), limit, thread_counts in TARGETS:
        for threads in thread_counts:
            numerator = median_at(records, num_fmt, num_prec, threads)
            denominator = median_at(records, den_fmt, den_prec, threads)
            name = f"{num_fmt} {num_prec} / {den_fmt} {den_prec} at {threads} thread(s) <= {limit}"
            if numerator is None or denominator is None:
                notes.append(f"target '{name}': not measured (artifact missing)")
                continue
            ratio = numerator / denominator
            checks.append({"target": name, "ratio": round(ratio, 3), "limit": limit, "met": ratio <= limit})
    notes.append(litert_torch_note())
    return checks


def litert_torch_note() -> str:
    """litert-torch needs its own venv (jax, transformers), so its comparison is a separate script:
    quote that script's last result rather than leave the target unreported."""
    if not LITERT_TORCH_RESULTS.is_file():
        return "spnas int8 TFLite vs litert-torch int8 (target <= 1.0x): run benchmarks/litert_torch_compare.py"
    one_thread = json.loads(LITERT_TORCH_RESULTS.read_text())["latency"]["1"]
    ratio, ms = one_thread["ratios"]["our_int8_over_litert_torch_int8"], one_thread["median_ms"]
    return (f"spnas int8 TFLite / litert-torch int8 at 1 thread: {ratio}x (target <= 1.0x; litert-torch int8 "
            f"{ms['litert_torch_int8']} ms, fp32 {ms['litert_torch_fp32']} ms), "
            f"from benchmarks/litert_torch_compare.py, a separate run")


def markdown(records, fidelity_by_name, pixel1, machine, checks) -> str:
    from spnas.console import markdown_table

    threads = sorted({r["threads"] for r in records})
    names = list(dict.fromkeys(r["artifact"] for r in records))
    rows = []
    for name in names:
        mine = {r["threads"]: r for r in records if r["artifact"] == name}
        first = next(iter(mine.values()))
        float_median = median_at(records, first["format"], "fp32", 1)
        own_median = mine[threads[0]]["latency_ms"]["median"]
        metrics = fidelity_by_name.get(name)
        rows.append([f"`{name}`", first["runtime"], first["precision"], f"{first['size_bytes'] / 1e6:.1f}",
                     *[f"{mine[t]['latency_ms']['median']:.1f}" for t in threads],
                     f"{own_median / float_median:.2f}x" if float_median and first["format"] != "pytorch" else "-",
                     f"{metrics['top1_agreement'] * 100:.1f} %" if metrics else "reference",
                     (f"{metrics['sqnr_db']:.1f}" if isinstance(metrics["sqnr_db"], float) else metrics["sqnr_db"])
                     if metrics else "-"])
    headers = ["artifact", "runtime", "precision", "size MB", *[f"median ms, {t} thread(s)" for t in threads],
               f"vs fp32 ({threads[0]}t)", "top-1 agreement", "SQNR dB"]
    untimed = [[f"`{name}`", f"{m['top1_agreement'] * 100:.1f} %", f"{m['sqnr_db']:.1f}"]
               for name, m in fidelity_by_name.items() if name not in names]
    lines = [markdown_table(headers, rows), ""]
    if untimed:
        lines += ["Fidelity only (Core ML, evaluated with spnas.mil_eval on Linux; no latency here):", "",
                  markdown_table(["artifact", "top-1 agreement", "SQNR dB"], untimed), ""]
    if pixel1:
        lines.append(f"Pixel 1 (authors' per-layer table, TFLite, 1 thread): **{pixel1['predicted_ms']:.2f} ms** "
                     f"predicted; the paper reports {pixel1['paper_ms']:.2f} ms.")
    for check in checks:
        lines.append(f"Target {check['target']}: {check['ratio']:.2f}x ({'met' if check['met'] else 'NOT met'}).")
    simd = f" ({', '.join(machine['cpu_simd'])})" if machine.get("cpu_simd") else ""
    lines.append(f"Measured on {machine.get('cpu_model') or machine['processor'] or machine['machine']}{simd}, "
                 f"{machine['cpu_count']} logical CPUs, {machine['platform']}, "
                 f"{datetime.date.today().isoformat()}; medians of interleaved runs, runtime call only.")
    return "\n".join(lines)


def plot_fidelity(records, fidelity_by_name, path: Path, eval_rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for record in records:
        metrics = fidelity_by_name.get(record["artifact"])
        if record["threads"] != 1 or metrics is None:
            continue
        axes.scatter(record["latency_ms"]["median"], metrics["top1_agreement"] * 100, s=40)
        axes.annotate(record["artifact"].removeprefix("spnasnet_100_"), (record["latency_ms"]["median"],
                      metrics["top1_agreement"] * 100), textcoords="offset points", xytext=(5, 3), fontsize=8)
    axes.set_xlabel("host latency, median ms (1 thread)")
    axes.set_ylabel("top-1 agreement with PyTorch, %")
    axes.set_title(f"fidelity vs latency (fixture weights, labels.csv rows {eval_rows[0]}-{eval_rows[1] - 1})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    from spnas.bench.chart import plot_latency
    from spnas.bench.host import BenchTarget, run_host
    from spnas.create import create_model
    from spnas.images import PROTOCOL_CALIB_ROWS, PROTOCOL_EVAL_ROWS, labelled_rows
    from spnas.io import atomic_write_text
    from spnas.machine import machine_facts
    from spnas.reference import TorchRunner

    def log(message: str) -> None:
        print(f"headline: {message}", file=sys.stderr, flush=True)

    data = SHARED_DATA
    weights, labels = data / "spnasnet_100_fixture.safetensors", data / "imagenet-sample" / "labels.csv"
    if not weights.is_file() or not labels.is_file():
        print(f"error: shared data missing under {data} (set SPNAS_SHARED_DATA)", file=sys.stderr)
        return 2
    calib_rows, eval_rows = ((0, 32), (600, 640)) if args.quick else (PROTOCOL_CALIB_ROWS, PROTOCOL_EVAL_ROWS)
    log(f"loading images: calibration rows {calib_rows[0]}-{calib_rows[1] - 1}, "
        f"evaluation rows {eval_rows[0]}-{eval_rows[1] - 1}")
    calib_pixels = labelled_rows(labels, *calib_rows).pixels
    eval_pixels = labelled_rows(labels, *eval_rows).pixels
    model = create_model(str(weights))
    reference = TorchRunner(model).run(eval_pixels)
    notes: list[str] = ["the machine is shared (other processes load its CPUs): compare ratios within this run, "
                        "not absolute times across runs"]
    with tempfile.TemporaryDirectory(prefix="spnas-headline-") as scratch:
        export_dir = args.keep_artifacts or Path(scratch)
        artifacts = export_all(model, calib_pixels, export_dir, notes, log)
        fidelity_by_name = fidelity(artifacts, eval_pixels, reference, log)
        timed = [a for a in artifacts if a.format != "coreml" or sys.platform == "darwin"]
        if len(timed) < len(artifacts):
            notes.append("coreml: fidelity from spnas.mil_eval; no latency, Core ML runs only on macOS")
        targets = [BenchTarget(a.path.name, a.format, a.path) for a in timed]
        targets.append(BenchTarget("pytorch (fixture)", "pytorch", None, str(weights)))
        load_before = os.getloadavg()
        latency = run_host(targets, args.threads, args.warmup, args.runs, args.rounds, log)
        latency["machine"]["load_average_1m"] = {"before": round(load_before[0], 2),
                                                 "after": round(os.getloadavg()[0], 2)}
    records = latency["results"]
    pixel1 = pixel1_prediction(notes)
    checks = check_targets(records, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "quick": args.quick, "weights": str(weights.name), "calibration_rows": list(calib_rows),
                "evaluation_rows": list(eval_rows), "machine": latency["machine"], "runtimes": latency["runtimes"],
                "latency_settings": latency["settings"], "artifacts": [
                    {"name": a.path.name, "format": a.format, "precision": a.precision, "details": a.details}
                    for a in artifacts],
                "latency": records, "fidelity": fidelity_by_name, "pixel1": pixel1, "targets": checks,
                "notes": notes}
    json_path = atomic_write_text(args.out / "headline.json", json.dumps(document, indent=2, default=str) + "\n")
    plot_latency(records, args.out / "headline_latency.png", "SPNasNet-100 host latency by artifact")
    plot_fidelity(records, fidelity_by_name, args.out / "headline_fidelity.png", eval_rows)
    print(markdown(records, fidelity_by_name, pixel1, machine_facts(), checks))
    for note in notes:
        print(f"- note: {note}")
    log(f"wrote {json_path}, headline_latency.png, headline_fidelity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
