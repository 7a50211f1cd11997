"""One int8 plan, three formats: fidelity of each int8 artifact and of the formats against each other.

    python benchmarks/quant_plan.py --label after                 # this tree
    python /tmp/old-tree/benchmarks/quant_plan.py --label before  # a copy run from an older checkout

Protocol (every issue's): fixture weights, calibrate on labels.csv rows 0-127, evaluate on rows
600-799.  Exports the int8 TFLite, ONNX and CoreML (W8A8) artifacts through each format's
``export(ctx)`` of the tree the script sits in, times each export, and measures every artifact's
logit SQNR and top-1 agreement against the PyTorch reference, the pairwise SQNR between the
int8 artifacts, and (where the tree has ``spnas.quantize``) the torch int8 simulation's.  CoreML
runs through ``spnas.mil_eval`` (program semantics; Apple's runtime is not available here).
Merges the run under ``--label`` into ``benchmarks/results/quant_plan.json`` with the CPU model,
so a before/after pair measured on one machine sits side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import cpu_model, fixture_protocol  # noqa: E402

FORMATS = ("tflite", "onnx", "coreml")
RESULTS = Path(__file__).resolve().parent / "results" / "quant_plan.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="name of this run in the results (before, after, ...)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import numpy as np

    from spnas.export import ExportContext, format_module
    from spnas.parity import compare, sqnr_db
    from spnas.preprocess import DEFAULT_SPEC

    model, calib, held_out, reference = fixture_protocol()
    logits, run = {}, {"cpu": cpu_model(), "code": str(ROOT), "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        plan = None
        for fmt in FORMATS:
            ctx = ExportContext(model=model, weights=model.weights_info, preprocessing=DEFAULT_SPEC,
                                calibration_pixels=calib, out_dir=Path(tmp) / fmt, int8=True, quant_plan=plan,
                                progress=lambda message: None)
            ctx.out_dir.mkdir()
            start = time.perf_counter()
            (artifact,) = [a for a in format_module(fmt).export(ctx) if a.precision == "int8"]
            seconds = time.perf_counter() - start
            plan = getattr(ctx, "quant_plan", None)
            logits[fmt] = format_module(fmt).load(artifact.path).run(held_out)
            metrics = compare(reference, logits[fmt])
            run["formats"][fmt] = {"sqnr_db": metrics["sqnr_db"], "top1_agreement": metrics["top1_agreement"],
                                   "export_seconds_incl_fp": round(seconds, 1)}
            print(f"{fmt:7s} int8: {metrics['sqnr_db']:.2f} dB, top-1 {metrics['top1_agreement']:.3f} "
                  f"(export {seconds:.0f} s)", flush=True)
        if plan is not None:
            from spnas.folding import fold_batchnorm
            from spnas.preprocess import normalize
            from spnas.quantize import simulate

            simulated = simulate(fold_batchnorm(model), plan, normalize(held_out))
            run["simulation"] = {"sqnr_db": sqnr_db(reference, simulated),
                                 "vs_runtime_db": {fmt: sqnr_db(simulated, logits[fmt]) for fmt in FORMATS}}
            print(f"simulation: {run['simulation']['sqnr_db']:.2f} dB; against each runtime "
                  + ", ".join(f"{k} {v:.1f} dB" for k, v in run["simulation"]["vs_runtime_db"].items()))
    run["pairwise_sqnr_db"] = {f"{a}-{b}": sqnr_db(logits[a], logits[b]) for a, b in itertools.combinations(FORMATS, 2)}
    run["pairwise_top1_agreement"] = {f"{a}-{b}": float(np.mean(logits[a].argmax(1) == logits[b].argmax(1)))
                                      for a, b in itertools.combinations(FORMATS, 2)}
    print("pairwise: " + ", ".join(f"{k} {v:.1f} dB" for k, v in run["pairwise_sqnr_db"].items()))
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results[args.label] = run
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
