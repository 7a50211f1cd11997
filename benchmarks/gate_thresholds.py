"""Parity of correct and deliberately broken exports on every format: the evidence behind the gate defaults.

Fixture weights, the CLI's default split of ../shared/data/imagenet-sample (seed 0: 200
calibration images, 50 held-out parity images). For each format, the correct export and each
fault of ``spnas.faults`` are exported with the real exporters and compared with the correct
PyTorch reference. Writes benchmarks/results/gate_thresholds.json and prints a table with the
verdict of the default thresholds (``spnas.parity.DEFAULT_THRESHOLDS``).

    python benchmarks/gate_thresholds.py [--formats tflite,onnx,coreml]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from shared_data import SHARED_DATA as SHARED

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="tflite,onnx,coreml")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gate_thresholds.json"))
    args = parser.parse_args()

    import spnas
    from spnas.console import format_table
    from spnas.export import ExportContext, format_module
    from spnas.faults import FAULTS, apply_fault
    from spnas.images import split_images
    from spnas.parity import DEFAULT_THRESHOLDS, compare
    from spnas.preprocess import DEFAULT_SPEC
    from spnas.reference import TorchRunner

    model = spnas.create_model(str(SHARED / "spnasnet_100_fixture.safetensors"))
    calib, parity = split_images(SHARED / "imagenet-sample", 200, 50, seed=0)
    reference = TorchRunner(model).run(parity.pixels)
    rows, results = [], []
    for name in args.formats.split(","):
        module = format_module(name)
        for fault in ("none", *FAULTS):
            broken_model, spec, pixels = (model, DEFAULT_SPEC, calib.pixels) if fault == "none" else \
                apply_fault(fault, model, DEFAULT_SPEC, calib.pixels)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                ctx = ExportContext(model=broken_model, weights=model.weights_info, preprocessing=spec,
                                    calibration_pixels=pixels, out_dir=Path(tmp), int8=True,
                                    progress=lambda message: None)
                for artifact in module.export(ctx):
                    metrics = compare(reference, module.load(artifact.path).run(parity.pixels))
                    failures = DEFAULT_THRESHOLDS[artifact.precision].failures(metrics)
                    results.append({"format": name, "precision": artifact.precision, "fault": fault,
                                    "metrics": metrics, "default_gate": "fail" if failures else "pass",
                                    "failures": failures})
                    rows.append([name, artifact.precision, fault, f"{metrics['top1_agreement']:.3f}",
                                 f"{metrics['sqnr_db']:.1f}", f"{metrics['max_rel_error']:.1e}",
                                 "fail" if failures else "pass"])
                    print(" ".join(rows[-1]), f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    table = format_table(["format", "precision", "fault", "top1", "SQNR dB", "rel err", "default gate"], rows)
    print(table)
    Path(args.out).write_text(json.dumps({
        "protocol": "fixture weights; imagenet-sample split seed 0: 200 calibration, 50 parity images; "
                    "faults from spnas.faults; reference = correct PyTorch model",
        "thresholds": {p: {k: v for k, v in vars(t).items() if v is not None} for p, t in DEFAULT_THRESHOLDS.items()},
        "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
