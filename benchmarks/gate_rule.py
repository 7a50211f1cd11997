"""The int8 gate rule measured on several models and on the four faults: every correct export must pass, every
fault must fail.

    python benchmarks/gate_rule.py                  # export and measure, then apply the rule
    python benchmarks/gate_rule.py --rule-only      # re-apply spnas.gates' rule to the recorded measurements

Models: the fixture (1000 classes), ``spnasnet_100_coarse8`` (8 classes), and two fine-tunes made here
(``tests/finetunes.py``): a 4-class fine-tune at 192 px, bicubic, mean/std 0.5, with every layer trained (SGD
steps in train mode), and a 6-class linear probe at 256 px.  Each is exported as spnas-export does it (its
seeded split of imagenet-sample, ``NUM_CALIB`` calibration and ``NUM_PARITY`` parity images; one plan lowered by
TFLite, ONNX and CoreML W8A8), correctly and with each fault of ``spnas.faults`` applied to the export's inputs
(the faults lowered by TFLite only: a fault enters every format's inputs alike, and each fault's plan is the
slow part).
Recorded per export: each int8 artifact's logit SQNR and top-1 against float and against the plan's
simulation (computed as spnas-verify does: the reference weights and preprocessing, the quant_plan.json the
export wrote), the simulation's pooled-feature and logit SQNR against float, and every pair of artifacts.
The verdicts come from ``spnas.gates.plan_gate`` (the default rule), next to the old fixed gates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import SHARED_DATA, cpu_model  # noqa: E402

FORMATS = ("tflite", "onnx", "coreml")
FAULT_FORMATS = ("tflite",)  # a fault enters every format's inputs alike; the plan per fault is the slow part
NUM_CALIB, NUM_PARITY = 32, 32  # spnas-export's split (seed 0) at a size a contended 2-core machine runs in minutes
RESULTS = Path(__file__).resolve().parent / "results" / "gate_rule.json"
PROBE6 = {"names": ["dog", "bird", "invertebrate", "object", "food", "other"],
          "cfg": {"input_size": [3, 256, 256], "interpolation": "bilinear", "crop_pct": 0.95}}
TRAINED4 = {"names": ["dog", "bird", "object", "other"],
            "cfg": {"input_size": [3, 192, 192], "interpolation": "bicubic", "crop_pct": 0.9,
                    "mean": [0.5] * 3, "std": [0.5] * 3}}


MODELS = ("trained_4_192px_bicubic_mean0.5_all_layers", "coarse8_8", "fixture_1000", "probe_6_256px")


def make_model(name: str, folder: Path) -> str:
    """The weights of one of ``MODELS``: a shared checkpoint, or a fine-tune made now in ``folder``."""
    from finetunes import changed_layers, linear_probe, train_all_layers, write_timm_folder

    import spnas

    fixture, images = SHARED_DATA / "spnasnet_100_fixture.safetensors", SHARED_DATA / "imagenet-sample"
    if name == "fixture_1000":
        return str(fixture)
    if name == "coarse8_8":
        return str(SHARED_DATA / "spnasnet_100_coarse8")
    if name == "probe_6_256px":
        probe = linear_probe(fixture, images, PROBE6["names"], PROBE6["cfg"], count=48)
        return str(write_timm_folder(folder / "probe6", probe, names=PROBE6["names"], cfg=PROBE6["cfg"]))
    trained = train_all_layers(fixture, images, TRAINED4["names"], TRAINED4["cfg"], steps=8, batch=8, lr=0.01)
    share = changed_layers(spnas.create_model(str(fixture), num_classes=4).state_dict(), trained)
    print(f"{name}: {share:.0%} of the float tensors changed", file=sys.stderr)
    return str(write_timm_folder(folder / "trained4", trained, names=TRAINED4["names"], cfg=TRAINED4["cfg"]))


def measure_models(names: list[str], measure, results: dict, path: Path) -> dict:
    """``results["models"][name] = measure(weights)`` for each of ``names`` (fine-tunes made in a scratch folder),
    the JSON written to ``path`` after each model and with the end's load average."""
    results.setdefault("models", {})
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"{name}:", file=sys.stderr, flush=True)
            results["models"][name] = measure(make_model(name, Path(tmp)))
            path.write_text(json.dumps(results, indent=1) + "\n")
    results["load_average_end"] = os.getloadavg()
    path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def measure_model(weights: str, tmp: Path, save=lambda model: None) -> dict:
    """Every export (correct and each fault) of one model: raw metrics only; ``save`` gets the model's record
    after each export, so a long run leaves what it measured."""
    from spnas.create import create_model
    from spnas.export import ExportContext, format_module
    from spnas.faults import FAULTS, apply_fault
    from spnas.folding import fold_batchnorm
    from spnas.images import split_images
    from spnas.parity import compare
    from spnas.preprocess import normalize
    from spnas.quantize.drift import body_sqnr
    from spnas.reference import TorchRunner
    from spnas.source import resolve_source

    source = resolve_source(weights)
    spec = source.spec
    model = create_model(source.checkpoint, spec=spec)
    calib, parity = split_images(SHARED_DATA / "imagenet-sample", NUM_CALIB, NUM_PARITY, 0, spec)
    reference = TorchRunner(model, spec).run(parity.pixels)
    folded = fold_batchnorm(model)
    exports = {}
    record = {"weights": weights, "num_classes": len(source.class_names), "preprocessing": spec.to_dict(),
              "exports": exports}
    for fault in ("none", *FAULTS):
        broken, broken_spec, pixels = ((model, spec, calib.pixels) if fault == "none"
                                       else apply_fault(fault, model, spec, calib.pixels))
        plan, logits, seconds = None, {}, {}
        for fmt in FORMATS if fault == "none" else FAULT_FORMATS:
            ctx = ExportContext(model=broken, weights=model.weights_info, preprocessing=broken_spec,
                                calibration_pixels=pixels, out_dir=tmp / f"{fault}-{fmt}", int8=True,
                                quant_plan=plan, class_names=source.class_names, progress=lambda message: None)
            ctx.out_dir.mkdir(parents=True)
            start = time.perf_counter()
            (artifact,) = [a for a in format_module(fmt).export(ctx) if a.precision == "int8"]
            seconds[fmt] = round(time.perf_counter() - start, 1)
            plan = ctx.quant_plan
            logits[fmt] = format_module(fmt).load(artifact.path).run(parity.pixels)
        body, simulated = body_sqnr(folded, plan, normalize(parity.pixels, spec))  # as spnas-verify sees it
        artifacts = {fmt: {"vs_float": compare(reference, value), "vs_simulation": compare(simulated, value),
                           "export_seconds": seconds[fmt]} for fmt, value in logits.items()}
        pairs = [{"artifacts": [a, b], **compare(logits[a], logits[b])}
                 for a, b in itertools.combinations(logits, 2)]
        exports[fault] = {"simulation": body, "artifacts": artifacts, "pairs": pairs}
        save(record)
        print(f"  {fault}: simulation pooled {body['pooled_sqnr_db']:.1f} dB, logits {body['logit_sqnr_db']:.1f}; "
              + ", ".join(f"{fmt} {a['vs_float']['sqnr_db']:.1f}/{a['vs_simulation']['sqnr_db']:.1f}"
                          for fmt, a in artifacts.items()), file=sys.stderr, flush=True)
    return record


def old_gate(export: dict) -> bool:
    """Today's fixed gates: int8 SQNR >= 22 dB and top-1 >= 0.85 against float, pairwise >= 38 dB."""
    from spnas.parity import DEFAULT_THRESHOLDS

    return (all(not DEFAULT_THRESHOLDS["int8"].failures(a["vs_float"]) for a in export["artifacts"].values())
            and all(pair["sqnr_db"] >= 38.0 for pair in export["pairs"]))


def apply_rule(results: dict) -> list[list[str]]:
    """Each export's verdict under ``spnas.gates.plan_gate`` and the old fixed gates; table rows."""
    from spnas.gates import plan_gate

    rows = []
    for name, model in results["models"].items():
        correct = model["exports"]["none"]["artifacts"]["tflite"]["vs_float"]
        for fault, export in model["exports"].items():
            if fault != "none" and export["artifacts"]["tflite"]["vs_float"] == correct:
                export["rule"] = {"passed": None, "note": "the fault changed no logit of this model (e.g. "
                                  "wrong_mean_std before spnas.faults swapped to ImageNet's for mean/std 0.5 models)"}
                rows.append([name, fault, "-", "-", "-", "-", "-", "-", "not a fault here"])
                continue
            vs_float = {fmt: a["vs_float"] for fmt, a in export["artifacts"].items()}
            vs_simulation = {fmt: a["vs_simulation"] for fmt, a in export["artifacts"].items()}
            pairs = {tuple(p["artifacts"]): p["sqnr_db"] for p in export["pairs"]}
            failures = plan_gate(export["simulation"], vs_float, vs_simulation, pairs)
            export["rule"] = {"passed": not any(failures.values()), "failures": failures}
            export["old_gate_passed"] = old_gate(export)
            expected = fault == "none"
            rows.append([name, fault, f"{export['simulation']['pooled_sqnr_db']:.1f}",
                         f"{export['simulation']['logit_sqnr_db']:.1f}",
                         "/".join(f"{v['sqnr_db']:.1f}" for v in vs_float.values()),
                         "/".join(f"{v['sqnr_db']:.1f}" for v in vs_simulation.values()),
                         "/".join(f"{v:.1f}" for v in pairs.values()),
                         "pass" if export["old_gate_passed"] else "fail",
                         ("pass" if export["rule"]["passed"] else "fail")
                         + ("" if export["rule"]["passed"] == expected else " WRONG")])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule-only", action="store_true", help="re-apply the rule to the recorded measurements")
    parser.add_argument("--models", default=",".join(MODELS), help="a subset of: " + ", ".join(MODELS))
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="combine the models of several runs' results (e.g. subsets run side by side)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from spnas.console import format_table

    if args.rule_only:
        results = json.loads(args.results.read_text())
    elif args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        results = {"cpu": runs[0]["cpu"], "runs": [{key: run[key] for key in run if key != "models"} | {
            "models": list(run["models"])} for run in runs], "models": {}}
        for run in runs:
            results["models"].update(run["models"])
    else:
        results = {"cpu": cpu_model(), "load_average_start": os.getloadavg(), "models": {}}
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.models.split(","):
                weights = make_model(name, Path(tmp))
                print(f"{name}:", file=sys.stderr, flush=True)

                def save(record, name=name, weights=weights):
                    shown = name if name.startswith(("probe", "trained")) else weights  # not a temporary path
                    results["models"][name] = {**record, "weights": shown}
                    args.results.write_text(json.dumps(results, indent=1) + "\n")

                measure_model(weights, Path(tmp) / name, save)
        results["load_average_end"] = os.getloadavg()
    from spnas.gates import RULE

    results["rule"] = RULE
    rows = apply_rule(results)
    print(format_table(["model", "fault", "sim pooled dB", "sim logit dB", "vs float t/o/c", "vs sim t/o/c",
                        "pairwise to/tc/oc", "old gate", "rule"], rows))
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    wrong = [row for row in rows if row[-1].endswith("WRONG")]
    judged = [row for row in rows if row[-1] != "not a fault here"]
    print(f"wrote {args.results}; {len(judged) - len(wrong)}/{len(judged)} exports judged right", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
