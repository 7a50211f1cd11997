"""Where the int8 plan's noise comes from, and what activation range equalization does about it (issue #24).

    python benchmarks/ptq_noise.py                       # the four models of gate_rule.py
    python benchmarks/ptq_noise.py --models coarse8_8

Calibration: ``labels.csv`` rows 0-199 (the export's default count); evaluation: rows 600-799.  Per model, the
simulation's pooled-feature and logit SQNR and top-1 against the float folded net for:

- ``default``: the export's plan (activation range equalization on the per-channel ranges of the first 64
  calibration images, MSE ranges, bias correction), and the same plan without the equalization;
- the noise taken apart, without equalization and bias correction (it corrects both sources at once): every
  tensor and weight quantized, activations only (float weights and biases), weights only (float activations);
- ``worst_tensors``: the five activation tensors that cost the most when each alone is quantized (float weights,
  rows 600-663): the loss is concentrated, not spread;
- the equalization with ``alpha`` 1 uncapped (``spnas.folding.equalize``), the plan built on that net, for
  comparison with the default rule.

Writes ``benchmarks/results/ptq_noise.json`` with the CPU model and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_rule import MODELS, SHARED_DATA, cpu_model, measure_models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ptq_noise.json"
CALIBRATION_ROWS = (0, 200)
EVALUATION_ROWS = (600, 800)
TENSOR_IMAGES = 64
UNCAPPED = {"alpha": 1.0, "cap": 1e3}


def measure(weights: str) -> dict:
    from spnas.create import create_model
    from spnas.folding import channel_ranges, equalize, fold_batchnorm
    from spnas.images import labelled_rows
    from spnas.parity import compare, sqnr_db
    from spnas.preprocess import normalize
    from spnas.quantize import EQUALIZATION_IMAGES, PixelBatches, build_plan
    from spnas.quantize.drift import POOLED, float_tensors
    from spnas.quantize.simulate import Int8Ops, fake_quant, walk_tensors
    from spnas.source import resolve_source

    source = resolve_source(weights)
    spec = source.spec
    folded = fold_batchnorm(create_model(source.checkpoint, spec=spec))
    labels = SHARED_DATA / "imagenet-sample" / "labels.csv"
    evaluation = normalize(labelled_rows(labels, *EVALUATION_ROWS, spec).pixels, spec)
    calibration = labelled_rows(labels, *CALIBRATION_ROWS, spec).pixels
    names = [POOLED, folded.classifier.name]
    reference = float_tensors(folded, evaluation, names)

    def row(net, ops, seconds=None, x=evaluation, ref=reference):
        got = walk_tensors(net, ops, x, names)
        logits = compare(ref[names[1]], got[names[1]])
        found = {"pooled_sqnr_db": round(sqnr_db(ref[POOLED], got[POOLED]), 2),
                 "logit_sqnr_db": round(logits["sqnr_db"], 2), "top1_agreement": logits["top1_agreement"]}
        return found if seconds is None else {**found, "plan_seconds": round(seconds, 1)}

    def timed_plan(net, **options):
        start = time.perf_counter()
        plan = build_plan(net, PixelBatches(calibration, spec), spec, **options)
        return plan, time.perf_counter() - start

    class WeightsOnly(Int8Ops):
        def tensor(self, name, x):
            return x

    class OneTensor(Int8Ops):
        def __init__(self, net, plan, quantized):
            super().__init__(net, plan)
            self.quantized = quantized

        def tensor(self, name, x):
            return fake_quant(x, self.plan.tensors[name]) if name == self.quantized else x

    plan, seconds = timed_plan(folded)
    rows = {"default": row(folded, Int8Ops(folded, plan), seconds)}
    plan, seconds = timed_plan(folded, equalization=False)
    rows["default without equalization"] = row(folded, Int8Ops(folded, plan), seconds)
    uncorrected, _ = timed_plan(folded, bias_correction=False, equalization=False)
    every_layer = [conv.name for conv in folded.layers()]
    float_weights = replace(uncorrected, float_layers=every_layer)
    rows["no bias correction: weights and activations"] = row(folded, Int8Ops(folded, uncorrected))
    rows["no bias correction: activations only"] = row(folded, Int8Ops(folded, float_weights))
    rows["no bias correction: weights only"] = row(folded, WeightsOnly(folded, uncorrected))
    print(f"  {rows}", file=sys.stderr, flush=True)

    few = evaluation[:TENSOR_IMAGES]
    few_reference = {name: values[:TENSOR_IMAGES] for name, values in reference.items()}
    costs = sorted((row(folded, OneTensor(folded, float_weights, name), x=few, ref=few_reference)["pooled_sqnr_db"],
                    name) for name in folded.tensor_names() if name != folded.classifier.name)
    worst = [{"tensor": name, "pooled_sqnr_db": db} for db, name in costs[:5]]
    print(f"  worst tensors: {worst}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    net = equalize(folded, channel_ranges(folded, normalize(calibration[:EQUALIZATION_IMAGES], spec)), **UNCAPPED)
    plan, seconds = timed_plan(net, equalization=False)
    label = "equalized (alpha 1, cap 1000)"
    rows[label] = row(net, Int8Ops(net, plan), time.perf_counter() - start)
    print(f"  {label}: {rows[label]}", file=sys.stderr, flush=True)
    return {"num_classes": len(source.class_names), "preprocessing": spec.to_dict(), "variants": rows,
            "worst_tensors": worst}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="a subset of: " + ", ".join(MODELS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {"cpu": cpu_model(), "load_average_start": os.getloadavg(),
               "calibration_rows": list(CALIBRATION_ROWS), "evaluation_rows": list(EVALUATION_ROWS)}
    measure_models(args.models.split(","), measure, results, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
