"""How many calibration images the int8 plan needs: the plan's simulation against float per calibration size, on
the fixture, ``spnasnet_100_coarse8`` and the fine-tunes ``gate_rule.py`` makes (a 4-class one with every layer
trained, a 6-class linear probe at 256 px).

    python benchmarks/calibration_size.py                          # 32, 64, 128 and 200 images
    python benchmarks/calibration_size.py --sizes 32,200 --models coarse8_8

Calibration: the first N rows of ``labels.csv``; evaluation: rows 600-799 for every size, so only the calibration
set changes.  Per model and size: the simulation's pooled-feature and logit SQNR and top-1 against float (the
simulation is what every runtime computes, within 1 dB: ``tests/test_quantize.py``) and the plan's seconds, for the
default plan (activation equalization from ``EQUALIZATION_MIN_IMAGES`` images on), the plan without it, and below
that count the plan equalized anyway as it would be with enough images: why the default skips it there.
``spnas-export`` calibrates on ``--num-calib`` images (200 by default) of its seeded split; ``gate_rule.py``
uses 32.  Writes ``benchmarks/results/calibration_size.json`` with the CPU model and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_rule import MODELS, SHARED_DATA, cpu_model, measure_models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "calibration_size.json"
SIZES = (32, 64, 128, 200)
EVALUATION_ROWS = (600, 800)


def measure(weights: str, sizes: list[int]) -> dict:
    """One model's simulation against float for each calibration size."""
    from spnas.create import create_model
    from spnas.folding import channel_ranges, equalization_scales, fold_batchnorm
    from spnas.images import labelled_rows
    from spnas.preprocess import normalize
    from spnas.quantize import EQUALIZATION_IMAGES, EQUALIZATION_MIN_IMAGES, PixelBatches, build_plan
    from spnas.quantize.drift import body_sqnr
    from spnas.source import resolve_source

    source = resolve_source(weights)
    spec = source.spec
    folded = fold_batchnorm(create_model(source.checkpoint, spec=spec))
    labels = SHARED_DATA / "imagenet-sample" / "labels.csv"
    evaluation = normalize(labelled_rows(labels, *EVALUATION_ROWS, spec).pixels, spec)
    calibration = labelled_rows(labels, 0, max(sizes), spec).pixels
    rows = []
    for size in sizes:
        pixels = calibration[:size]
        variants = {"default": True, "without equalization": False}
        if size < EQUALIZATION_MIN_IMAGES:
            first = normalize(pixels[:EQUALIZATION_IMAGES], spec)
            variants["equalized anyway"] = equalization_scales(folded, channel_ranges(folded, first))
        row = {"calibration_images": size}
        for label, equalization in variants.items():
            start = time.perf_counter()
            plan = build_plan(folded, PixelBatches(pixels, spec), spec, equalization=equalization)
            seconds = time.perf_counter() - start
            body, _ = body_sqnr(folded, plan, evaluation)
            found = {"pooled_sqnr_db": round(body["pooled_sqnr_db"], 2),
                     "logit_sqnr_db": round(body["logit_sqnr_db"], 2), "top1_agreement": body["top1_agreement"],
                     "plan_seconds": round(seconds, 1)}
            if label == "default":
                row.update(found)
            else:
                row[label] = found
            print(f"  {size:4d} images, {label}: pooled {body['pooled_sqnr_db']:.2f} dB, logits "
                  f"{body['logit_sqnr_db']:.2f} dB, top-1 {body['top1_agreement']:.3f}, plan {seconds:.1f} s",
                  file=sys.stderr, flush=True)
        rows.append(row)
    return {"num_classes": len(source.class_names), "preprocessing": spec.to_dict(), "sizes": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="calibration image counts (at most 600)")
    parser.add_argument("--models", default=",".join(MODELS), help="a subset of: " + ", ".join(MODELS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = sorted(int(size) for size in args.sizes.split(","))
    if sizes[-1] > EVALUATION_ROWS[0]:
        parser.error(f"at most {EVALUATION_ROWS[0]} calibration images: rows {EVALUATION_ROWS[0]}+ are evaluated")
    from spnas.quantize.ranges import LOGIT_HEADROOM

    results = {"cpu": cpu_model(), "load_average_start": os.getloadavg(), "evaluation_rows": list(EVALUATION_ROWS),
               "logit_headroom": LOGIT_HEADROOM}
    measure_models(args.models.split(","), lambda weights: measure(weights, sizes), results, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
