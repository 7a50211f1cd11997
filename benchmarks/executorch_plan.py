"""ExecuTorch int8 lowering the plan against ExecuTorch's own PT2E flow: fidelity, agreement with TFLite, latency.

    python benchmarks/executorch_plan.py                 # fixture + the coarse8 fine-tune, latency on the fixture
    python benchmarks/executorch_plan.py --no-coarse8 --runs 200

Protocol (every issue's): calibrate on labels.csv rows 0-127, evaluate on rows 600-799.  One plan
per checkpoint (``build_plan`` on the calibration rows), lowered to int8 TFLite and to an int8 ``.pte``
(``--executorch-int8 plan``); the ``.pte`` of ExecuTorch's own flow (``pt2e``) is calibrated on the
same rows.  Records each artifact's logit SQNR and top-1 agreement against the PyTorch reference,
the simulation's, each ``.pte`` against the int8 TFLite, and (fixture) the latency of the three int8
artifacts at 1 and 2 threads measured in one run by ``spnas.bench.host.measure`` (interleaved worker
processes, both runtimes on XNNPACK), with the CPU model and load average: on a shared machine the
ratios of one run are the figure, not the milliseconds.  Writes ``benchmarks/results/executorch_plan.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import SHARED_DATA  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "executorch_plan.json"
LABELS = SHARED_DATA / "imagenet-sample" / "labels.csv"
CHECKPOINTS = {"fixture": SHARED_DATA / "spnasnet_100_fixture.safetensors",
               "coarse8": SHARED_DATA / "spnasnet_100_coarse8"}


def load_average() -> list[float]:
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def int8_artifacts(name: str, out: Path) -> tuple[dict[str, Path], dict]:
    """The int8 .tflite and the plan / pt2e .pte of one checkpoint, and their fidelity figures."""
    import spnas
    from spnas.export import ExportContext, executorch, tflite
    from spnas.export.options import CHOICES, FormatOptions
    from spnas.folding import fold_batchnorm
    from spnas.images import PROTOCOL_CALIB_ROWS, PROTOCOL_EVAL_ROWS, labelled_rows
    from spnas.parity import compare, sqnr_db
    from spnas.preprocess import normalize
    from spnas.quantize import PixelBatches, build_plan, simulate
    from spnas.reference import TorchRunner
    from spnas.source import resolve_source

    source = resolve_source(str(CHECKPOINTS[name]))
    spec = source.spec
    model = spnas.create_model(source.checkpoint, spec=spec)
    calib = labelled_rows(LABELS, *PROTOCOL_CALIB_ROWS, spec).pixels
    held_out = labelled_rows(LABELS, *PROTOCOL_EVAL_ROWS, spec).pixels
    reference = TorchRunner(model, spec).run(held_out)
    folded = fold_batchnorm(model)
    plan = build_plan(folded, PixelBatches(calib, spec), spec, weights_sha256=model.weights_info.sha256)
    out.mkdir(parents=True)
    ctx = ExportContext(model=model, weights=model.weights_info, preprocessing=spec, calibration_pixels=calib,
                        out_dir=out, int8=True, quant_plan=plan, class_names=source.class_names,
                        progress=lambda message: print(f"  {name}: {message}", flush=True))
    paths = {"tflite int8": out / "spnasnet_100_int8.tflite"}
    paths["tflite int8"].write_bytes(tflite.with_standard_metadata(
        tflite.lower(folded, plan, spec=spec), ctx, "int8"))
    for flow in CHOICES["executorch_int8"]:
        ctx.options = FormatOptions.of(executorch_int8=flow)
        exported, _ = executorch.int8_program(ctx)
        metadata = executorch.artifact_metadata(ctx, "int8")
        content, _ = executorch.lower(exported, executorch.metadata_methods(metadata, source.class_names))
        paths[f"pte int8 {flow}"] = out / f"spnasnet_100_int8_{flow}.pte"
        paths[f"pte int8 {flow}"].write_bytes(content)
    from spnas.export import load_runner

    logits = {label: load_runner(path).run(held_out) for label, path in paths.items()}
    simulated = simulate(folded, plan, normalize(held_out, spec))
    figures = {"classes": model.num_classes, "input_size": spec.input_size,
               "simulation": {"sqnr_db": sqnr_db(reference, simulated),
                              "top1_agreement": compare(reference, simulated)["top1_agreement"]}}
    for label, values in logits.items():
        metrics = compare(reference, values)
        figures[label] = {"sqnr_db": metrics["sqnr_db"], "top1_agreement": metrics["top1_agreement"],
                          "vs_simulation_db": sqnr_db(simulated, values)}
        if label != "tflite int8":
            figures[label]["vs_tflite_int8_db"] = sqnr_db(logits["tflite int8"], values)
        print(f"{name} {label}: {metrics['sqnr_db']:.2f} dB, top-1 {metrics['top1_agreement']:.3f}"
              + (f", against TFLite int8 {figures[label]['vs_tflite_int8_db']:.1f} dB"
                 if label != "tflite int8" else ""), flush=True)
    return paths, figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-coarse8", action="store_true", help="fixture only")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per artifact and thread count")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from spnas.bench import central_ms
    from spnas.bench.host import BenchTarget, measure
    from spnas.machine import machine_facts

    run = {"machine": machine_facts(), "load_average_before": load_average(), "fidelity": {}, "latency": {}}
    with tempfile.TemporaryDirectory() as tmp:
        names = ["fixture"] + ([] if args.no_coarse8 else ["coarse8"])
        paths = {}
        for name in names:
            paths[name], run["fidelity"][name] = int8_artifacts(name, Path(tmp) / name)
        targets = [BenchTarget(label, "tflite" if label.startswith("tflite") else "executorch", path)
                   for label, path in paths["fixture"].items()]
        for threads in (1, 2):
            records = measure(targets, threads, warmup=10, runs=args.runs, rounds=10,
                              progress=lambda message: print(message, flush=True))
            base = central_ms(records[0])
            run["latency"][f"{threads}_threads"] = {
                record["artifact"]: {"median_ms": round(central_ms(record), 2),
                                     "ratio_to_tflite_int8": round(central_ms(record) / base, 3)}
                for record in records}
            print(f"{threads} thread(s): " + ", ".join(f"{label} {value['median_ms']:.2f} ms "
                                                      f"({value['ratio_to_tflite_int8']:.2f}x)"
                                                      for label, value in run["latency"][f"{threads}_threads"].items()),
                  flush=True)
    run["load_average_after"] = load_average()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(run, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
