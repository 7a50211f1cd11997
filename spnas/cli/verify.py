"""``spnas-verify``: the parity gate for CI, over any of our artifacts.

Exit codes: 0 every artifact passes, 1 any artifact fails a threshold, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import sys

from spnas import __version__
from spnas.cli import add_ai_hub_arguments, add_threshold_arguments, add_validation_arguments

EPILOG = """\
examples:
  spnas-verify exports/spnasnet_100_int8.tflite --weights model.safetensors --images val/
  spnas-verify exports/*.onnx exports/*.tflite --json parity.json --markdown parity.md
  spnas-verify exports/spnasnet_100_int8.tflite --explain
  spnas-verify exports/*_int8.* --cpu haswell,cortex-a53,cortex-a76,cortex-a710
  spnas-verify exports/spnasnet_100_int8.tflite --ai-hub "Samsung Galaxy S24,Google Pixel 8"

Without --images, the held-out parity images listed in the report.json beside the artifact
are used, so the figures equal the ones spnas-export reported. Default thresholds per
precision: fp32 relative error <= 1e-5; fp16 SQNR >= 40 dB; int8 top-1 agreement >= 0.85
and SQNR >= 22 dB. An int8 artifact that lowers the quant_plan.json beside it is gated relative
to the plan's simulation on the same images instead: SQNR vs float at most 3 dB under the
simulation's, closer to the simulation than the simulation is to float, the plan's pooled
features >= 16 dB, pairs of artifacts closer to each other than to float (README, "Parity
thresholds"). --ai-hub runs the same images on real
phones of Qualcomm AI Hub and gates each device's outputs with the same thresholds; a device
whose job fails exits 2 after the others are reported.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spnas-verify", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".onnx, .tflite, .mlpackage or .pte")
    parser.add_argument("--weights", metavar="W",
                        help="reference weights (default: the source recorded in the artifact's report.json)")
    parser.add_argument("--images", metavar="DIR",
                        help="parity images; default: the report's held-out parity set")
    parser.add_argument("--num-calib", type=int, default=200, metavar="N",
                        help="with --images: calibration share of the split to skip, as spnas-export (default 200)")
    parser.add_argument("--num-parity", type=int, default=50, metavar="N",
                        help="with --images: parity images (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="with --images: split seed, as spnas-export (default 0)")
    parser.add_argument("--max-image-pixels", type=int, metavar="N",
                        help="refuse (skip with a warning) images over N pixels before decoding them "
                             "(default 89478485, or $SPNAS_MAX_IMAGE_PIXELS)")
    add_threshold_arguments(parser)
    add_validation_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write a Markdown table for a CI comment")
    parser.add_argument("--explain", action="store_true",
                        help="int8: per-layer loss on the plan's simulation, local (what each layer adds) and "
                             "accumulated, and the pooled-feature SQNR beside the logits'")
    parser.add_argument("--node-data", metavar="FILE",
                        help="with --explain and one int8 .tflite or .onnx: write the drift as Model Explorer node "
                             "data keyed by the artifact's node names (other per-layer figures to FILE.FIELD.json)")
    parser.add_argument("--arm64", action="store_true",
                        help="also run .tflite artifacts on aarch64 LiteRT under qemu emulation")
    parser.add_argument("--cpu", metavar="TIER[,TIER...]",
                        help="also run every artifact on emulated CPU tiers (qemu-user): haswell (x86-64 AVX2, no "
                             "VNNI), cortex-a53 (no dotprod), cortex-a76 (dotprod), cortex-a710 (i8mm); gated "
                             "against the native run, the plan's simulation and the reference")
    parser.add_argument("--cpu-images", type=int, default=8, metavar="N",
                        help="with --cpu: parity images per tier (default 8; emulation takes seconds per image)")
    add_ai_hub_arguments(parser, "inference")
    parser.add_argument("--strict", action="store_true", help="random reference weights fail the gate")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"spnas {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    from spnas.cli import ai_hub_misuse

    parser = build_parser()
    args = parser.parse_args(argv)
    if misused := ai_hub_misuse(args):
        parser.error(f"{misused} goes with --ai-hub")
    if args.node_data and not args.explain:
        parser.error("--node-data goes with --explain")
    from spnas.cli import run_cli

    return run_cli(lambda: cli_verify(args), args.debug)


def load_report_beside(artifact):
    """The export's report beside the artifact (its preprocessing, parity images and weights), if there is one."""
    from spnas.report import read_report

    path = artifact.parent / "report.json"
    return read_report(path) if path.is_file() else None


def parity_images(args, report, spec):
    """The images to verify on: --images split like spnas-export, else the report's parity set."""
    from pathlib import Path

    from spnas.errors import SpnasError
    from spnas.images import load_images, split_images

    if args.images:
        return split_images(args.images, args.num_calib, args.num_parity, args.seed, spec)[1]
    if not report:
        raise SpnasError("no --images given and no report.json beside the artifact to take parity images from")
    root = Path(report["parity_images"]["source"])
    paths = [root / entry["file"] for entry in report["parity_images"]["manifest"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SpnasError(f"parity image {missing[0]} from report.json is gone; pass --images DIR")
    return load_images(paths, root, spec)


def reference_checkpoint(args, report):
    from spnas.errors import SpnasError
    from spnas.weights import resolve_checkpoint

    weights = args.weights or (report and report["weights"]["source"])
    if not weights:
        raise SpnasError("no --weights given and no report.json beside the artifact naming them")
    return resolve_checkpoint(weights)


def reference_spec(checkpoint, report, runners: dict):
    """The reference's preprocessing: mean, std, interpolation and crop from the export's report.json (else the
    checkpoint's config); only the crop size from the artifacts, so a wrongly normalised artifact still fails."""
    import dataclasses

    from spnas.errors import SpnasError
    from spnas.preprocess import PreprocessSpec, spec_from_config

    spec = (PreprocessSpec.from_dict(report["preprocessing"]) if report
            else spec_from_config(checkpoint.pretrained_cfg)[0])
    sizes = {}
    for artifact, runner in runners.items():
        sizes.setdefault(runner.spec.input_size, artifact)
    if len(sizes) > 1:
        raise SpnasError("artifacts of different input sizes (" + ", ".join(f"{a.name}: {s}" for s, a in sizes.items())
                         + "); verify them separately")
    return dataclasses.replace(spec, input_size=next(iter(sizes)))


def reference_model(checkpoint, report, spec):
    from pathlib import Path

    from spnas import create_model
    from spnas.images import load_images

    bn_pixels = None
    if checkpoint.state is None and report:  # rebuild the same random model: BN re-estimated on the same images
        root = Path(report["calibration"]["source"])
        bn_pixels = load_images([root / e["file"] for e in report["calibration"]["manifest"]], root, spec).pixels
    return create_model(checkpoint, calib_pixels=bn_pixels, spec=spec)


def cli_verify(args: argparse.Namespace) -> int:
    """``run_verify`` with the tables and the exit code of the command line."""
    from pathlib import Path

    from spnas.verify import print_results

    report = run_verify(args, raise_job_failures=False)
    if report is None:
        return 1
    entries = print_results(report)
    for entry in entries:
        for failure in entry["gate"]["failures"]:
            print(f"FAIL {Path(entry['path']).name}: {failure}")
        if "explain" in entry:
            print_explain(entry, report.int8_plan)
    if any("ai_hub" in entry for entry in entries):
        print(device_table(entries))
    check_job_failures(entries)
    return report.exit_code


def check_job_failures(entries: list[dict]) -> None:
    """AI Hub jobs that failed are reported as failed, then the run ends as an input/service error (exit 2)."""
    from pathlib import Path

    from spnas.errors import SpnasError

    job_failures = [f"[{d['device']['name']}] {Path(e['path']).name}: {d['failure']}"
                    for e in entries for d in e.get("ai_hub", []) if "failure" in d]
    if job_failures:
        raise SpnasError(f"{len(job_failures)} AI Hub job(s) failed (reported as failed): " + "; ".join(job_failures))


def run_verify(args: argparse.Namespace, raise_job_failures: bool = True):
    """Gate the artifacts; returns the ``spnas.report.Report`` (``kind="verify"``) written to ``--json``, or None
    when ``--strict`` refused random reference weights."""
    import warnings
    from pathlib import Path

    from spnas.accelerators import ACCELERATED_FORMATS
    from spnas.artifact_intake import probe, require_spnas_metadata, unprobed
    from spnas.console import Console, install_warning_format
    from spnas.errors import SpnasError
    from spnas.export import format_of, load_runner
    from spnas.intake import set_pixel_limit
    from spnas.io import artifact_size, atomic_write_text
    from spnas.parity import Thresholds
    from spnas.quantize import PLAN_FILE
    from spnas.reference import TorchRunner
    from spnas.report import Report
    from spnas.verify import (
        gate_logits,
        gate_lowering,
        int8_agreement,
        lowers_plan,
        simulate_plan,
        summary_markdown,
        thresholds_for,
    )

    console = Console(args.quiet)
    install_warning_format(console)
    set_pixel_limit(args.max_image_pixels)
    artifacts = [Path(a) for a in args.artifacts]
    for artifact in artifacts:
        if not artifact.exists():
            raise SpnasError(f"{artifact}: no such artifact")
        format_of(artifact)
    if args.arm64 and not all(format_of(a) == "tflite" for a in artifacts):
        raise SpnasError("--arm64 runs .tflite artifacts only")
    from spnas.arm64.tiers import parse_tiers

    tiers = parse_tiers(args.cpu) if args.cpu else []
    if tiers and args.cpu_images < 1:
        raise SpnasError("--cpu-images must be at least 1")
    if tiers and not all(format_of(a) in ("tflite", "onnx", "executorch") for a in artifacts):
        raise SpnasError("--cpu runs .tflite, .onnx and .pte artifacts")
    if args.node_data and (len(artifacts) != 1 or format_of(artifacts[0]) not in ("tflite", "onnx")):
        raise SpnasError("--node-data writes the overlay of one artifact: give one int8 .tflite or .onnx")
    from spnas.cli import ai_hub_devices

    devices = ai_hub_devices(args)
    report = load_report_beside(artifacts[0])
    if unknown := unprobed(artifacts):
        with console.step(f"opening {len(unknown)} artifact(s) no spnas export ran, in a probe process"):
            probe(unknown)
    runners = {}
    for artifact in artifacts:  # before any image or reference work, so a bad artifact fails at once
        runners[artifact] = load_runner(artifact)
        require_spnas_metadata(runners[artifact], artifact)
        if args.node_data and runners[artifact].precision != "int8":
            raise SpnasError(f"--node-data: {artifact} is {runners[artifact].precision}; the drift overlay is int8's")
    with console.step("loading reference weights"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = reference_checkpoint(args, report)
    spec = reference_spec(checkpoint, report, runners)
    with console.step("loading parity images"):
        images = parity_images(args, report, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = reference_model(checkpoint, report, spec)
    random_weights = model.weights_info.is_random
    if random_weights and args.strict:
        console.warn("--strict: the reference weights are random; parity against them proves nothing")
        return None
    reference = TorchRunner(model, spec).run(images.pixels)
    entries, int8_logits = [], {}
    folder = artifacts[0].parent  # the report read is the one beside the first artifact
    plan_lowerings = {(folder / entry["path"]).resolve() for entry in (report or {}).get("artifacts", [])
                      if lowers_plan(entry)}
    int8_plan, simulated = None, None
    if plan_lowerings & {a.resolve() for a in artifacts} and (folder / PLAN_FILE).is_file():
        with console.step(f"simulating {PLAN_FILE} on {len(images)} images"):
            int8_plan, simulated = simulate_plan(model, checked_plan(folder / PLAN_FILE, model), images.pixels, spec,
                                                 args)
    for artifact in artifacts:
        with console.step(f"parity of {artifact.name} on {len(images)} images"):
            runner = runners[artifact]
            check_compatible(runner, artifact, model, reference)
            logits = runner.run(images.pixels)
            lowering = int8_plan is not None and artifact.resolve() in plan_lowerings
            result = (gate_lowering(logits, reference, int8_plan["simulation"], simulated, args, random_weights)
                      if lowering else gate_logits(logits, reference, runner.precision, random_weights=random_weights,
                                                   thresholds=thresholds_for(runner.precision, args)))
            entry = {"format": runner.format, "precision": runner.precision, "path": str(artifact),
                     "size_bytes": artifact_size(artifact), **result}
            if artifact.resolve() in plan_lowerings:
                int8_logits[str(artifact)] = logits
        if warning := runner.cpu_warning():
            console.warn(f"{artifact.name}: {warning}")
            entry["cpu_warning"] = warning
        if runner.format in ACCELERATED_FORMATS:
            with console.step(f"accelerator checks of {artifact.name}"):
                entry["accelerators"] = accelerators_of(artifact, runner.format, report)
        if args.explain and runner.precision == "int8":
            entry["explain"] = explain(artifact, images.pixels, model, spec, console)
            if args.node_data:
                from spnas.node_data import write_node_data

                entry["node_data"] = [str(p) for p in write_node_data(args.node_data, artifact, runner.format,
                                                                       entry["explain"])]
        if args.arm64:
            gate = Thresholds() if random_weights and runner.precision == "int8" else thresholds_for(runner.precision,
                                                                                                       args)
            entry["arm64"] = arm64_parity(artifact, images.pixels, reference, gate, console)
            if entry["arm64"]["passed"] is False:
                entry["passed"] = False
                entry["gate"]["status"] = "failed"
                entry["gate"]["failures"].append("arm64: " + "; ".join(entry["arm64"]["failures"]))
        if devices:
            entry["ai_hub"] = ai_hub_parity(artifact, runner, images.pixels, reference,
                                            thresholds_for(runner.precision, args), random_weights, devices, args,
                                            console)
            failed = [d for d in entry["ai_hub"] if d["passed"] is False]
            if failed:
                entry["passed"] = False
                entry["gate"]["status"] = "failed"
                entry["gate"]["failures"] += [f"{d['device']['name']}: " + "; ".join(d["gate"]["failures"])
                                              for d in failed]
        entries.append(entry)
    if tiers:
        cpu_tiers(args, tiers, artifacts, images.pixels, reference, simulated, plan_lowerings, random_weights,
                  entries, console)
    agreement = int8_agreement(int8_logits, reference, args.min_int8_agreement_db, args.int8_agreement_margin_db)
    validation = None
    if args.val:
        validation = verify_accuracy(args, report, checkpoint, spec, model, entries, console)
    result = Report.from_dict({"spnas_version": __version__, "weights": model.weights_info.to_dict(),
                               "images": {"n_images": len(images), "source": str(images.root)},
                               "validation": validation, "artifacts": entries, "int8_plan": int8_plan,
                               "int8_agreement": agreement},
                              kind="verify", exit_code=0 if all(entry["passed"] is not False for entry in entries)
                              and (agreement is None or agreement["passed"]) else 1)
    if args.json:
        atomic_write_text(args.json, result.to_json())
    if args.markdown:
        atomic_write_text(args.markdown, summary_markdown(entries) + "\n")
    if raise_job_failures:
        check_job_failures(entries)
    return result


def accelerators_of(artifact, fmt: str, report) -> dict:
    """The export's accelerator checks when report.json holds this very file (same sha256), else the checkers
    that read the file (a ``.pte``'s partitions are known only where its graph was lowered: the export)."""
    from spnas.accelerators import check, unchecked
    from spnas.io import artifact_sha256

    digest = artifact_sha256(artifact)
    recorded = next((entry.get("accelerators") for entry in (report or {}).get("artifacts", [])
                     if entry.get("sha256") == digest and entry.get("accelerators")), None)
    if recorded:
        return recorded
    if fmt == "executorch":
        return {"xnnpack": unchecked("spnas-export", "no report.json entry of this .pte: its XNNPACK partition is "
                                                    "counted when spnas-export lowers it")}
    return check(artifact, fmt)


def verify_accuracy(args, report, checkpoint, spec, model, entries, console) -> dict:
    """``--val``: task accuracy of the reference and each artifact; the set must not overlap the export's
    calibration images (report.json's manifest) by sha256."""
    from spnas.classes import class_names_for
    from spnas.reference import TorchRunner
    from spnas.validation import check_disjoint, load_valset, validate_entries

    names = (report or {}).get("classes", {}).get("names") or class_names_for(
        checkpoint.num_classes, checkpoint.label_names)[0]
    valset = load_valset(args.val, names)
    if report:
        check_disjoint(valset, report["calibration"]["manifest"])
    return validate_entries(valset, spec, TorchRunner(model, spec), entries, ".", args, console)


def check_compatible(runner, artifact, model, reference) -> None:
    """An artifact of another class count than the reference cannot be compared: say which weights it needs."""
    from spnas.errors import SpnasError

    classes = (getattr(runner, "metadata", None) or {}).get("spnas.num_classes")
    if classes is not None and int(classes) != reference.shape[1]:
        raise SpnasError(f"{artifact}: {classes} classes, but the reference ({model.weights_info.source}) has "
                         f"{reference.shape[1]}; pass the weights it was exported from with --weights")


def ai_hub_parity(artifact, runner, pixels, reference, thresholds, random_weights, devices, args, console) -> list:
    """Each device's outputs gated against the reference as the host run is, plus their agreement with the host."""
    from spnas.bench.aihub import device_logits
    from spnas.parity import compare, to_json_number
    from spnas.verify import RecordedOutputs, evaluate

    with console.step(f"inference jobs for {artifact.name} on {len(devices)} AI Hub device(s)"):
        outcomes = device_logits(artifact, runner, pixels, devices, compute_unit=args.compute_unit or "cpu",
                                 options=args.ai_hub_options, timeout=args.ai_hub_timeout, progress=console.info)
    host = runner.run(pixels)
    results = []
    for outcome in outcomes.values():
        if "failure" in outcome:
            results.append({"device": outcome["device"], "passed": None, "failure": outcome["failure"]})
            continue
        gated = evaluate(RecordedOutputs(runner, outcome["logits"]), pixels, reference, thresholds=thresholds,
                         random_weights=random_weights)
        vs_host = {key: to_json_number(value) for key, value in compare(host, outcome["logits"]).items()}
        results.append({"device": outcome["device"], "job": outcome["job"], **gated, "vs_host": vs_host})
    return results


def device_table(entries: list[dict]) -> str:
    """One row per (artifact, device): the gate against the reference and the agreement with the host."""
    from pathlib import Path

    from spnas.console import format_table

    def number(value, spec):
        return value if isinstance(value, str) else format(value, spec)

    rows = []
    for entry in entries:
        for device in entry.get("ai_hub", []):
            name = [Path(entry["path"]).name, device["device"]["name"]]
            if "failure" in device:
                rows.append([*name, "-", "-", "-", "-", "-", "-", "JOB FAILED"])
                continue
            parity, host, status = device["parity"], device["vs_host"], device["gate"]["status"]
            rows.append([*name, str(parity["n_images"]), f"{parity['top1_agreement']:.3f}",
                         number(parity["sqnr_db"], ".1f"), f"{host['top1_agreement']:.3f}",
                         number(host["sqnr_db"], ".1f"), f"{host['max_abs_error']:.2e}",
                         status if device["passed"] is None else status.upper()])
    return "\nAI Hub devices (gate: same thresholds as the host run):\n" + format_table(
        ["artifact", "device", "n", "top1 vs ref", "SQNR vs ref", "top1 vs host", "SQNR vs host", "max err vs host",
         "gate"], rows)


def checked_plan(path, model):
    """The ``quant_plan.json`` at ``path``, refused in one line unless it was made for ``model``'s weights."""
    from spnas.folding import fold_batchnorm
    from spnas.quantize import load_plan

    plan = load_plan(path)
    plan.check(fold_batchnorm(model), model.weights_info.sha256)
    return plan


def explain(artifact, pixels, model, spec, console) -> list[dict]:
    """Per-layer int8 loss of the plan the artifact lowers (the ``quant_plan.json`` beside it), in graph order:
    accumulated and local SQNR on the torch int8 simulation that every format's runtime follows
    (``spnas.quantize.drift``)."""
    from pathlib import Path

    from spnas.errors import SpnasError
    from spnas.folding import fold_batchnorm
    from spnas.preprocess import normalize
    from spnas.quantize import PLAN_FILE
    from spnas.quantize.drift import layer_drift

    plan_path = Path(artifact).parent / PLAN_FILE
    if not plan_path.is_file():
        raise SpnasError(f"--explain needs the {PLAN_FILE} that the export wrote beside {artifact}")
    plan = checked_plan(plan_path, model)
    with console.step(f"per-layer loss of {plan_path} (int8 simulation)"):
        return layer_drift(fold_batchnorm(model), plan, normalize(pixels[:8], spec))


def print_explain(entry: dict, plan: dict | None, worst: int = 10) -> None:
    """The layers that add the most loss (lowest local SQNR), with the loss accumulated up to each, and the
    plan's simulated SQNR at the pooled features beside the logits."""
    from pathlib import Path

    from spnas.console import format_table

    layers = entry["explain"]
    print(f"\nint8 loss per layer of {Path(entry['path']).name} on the plan's simulation (the {worst} of "
          f"{len(layers)} that add the most; local: the layer alone on float input, accumulated: up to its output):")
    rows = [[layer["layer"], f"{layer['local_sqnr_db']:.1f}", f"{layer['sqnr_db']:.1f}"]
            for layer in sorted(layers, key=lambda layer: layer["local_sqnr_db"])[:worst]]
    print(format_table(["layer", "local SQNR dB", "accumulated SQNR dB"], rows))
    if plan is not None:
        simulation = plan["simulation"]
        print(f"simulated SQNR at the pooled features {simulation['pooled_sqnr_db']:.1f} dB, at the logits "
              f"{simulation['logit_sqnr_db']:.1f} dB")


def cpu_tiers(args, tiers, artifacts, pixels, reference, simulated, plan_lowerings, random_weights, entries,
              console) -> None:
    """``--cpu``: every artifact on the emulated tiers; each entry gets its ``cpu_tiers`` block, and fails with it.
    ``simulated``: the plan's simulated logits on ``pixels`` (None without a plan), which every lowering is held to."""
    from spnas.arm64.tiers import summary_table, verify_tiers
    from spnas.parity import Thresholds
    from spnas.verify import thresholds_for

    count = min(args.cpu_images, len(pixels))
    simulations = {str(artifact.resolve()): simulated[:count] for artifact in artifacts
                   if simulated is not None and artifact.resolve() in plan_lowerings}
    thresholds = {precision: Thresholds() if random_weights and precision == "int8" else thresholds_for(precision, args)
                  for precision in ("fp32", "fp16", "int8")}
    with console.step(f"CPU tiers {', '.join(tiers)} under emulation"):
        blocks = verify_tiers(artifacts, pixels, reference, tiers, simulations=simulations, thresholds=thresholds,
                              max_images=count, progress=console.info)
    print(summary_table(blocks))
    for artifact, entry in zip(artifacts, entries, strict=True):
        entry["cpu_tiers"] = blocks[str(artifact.resolve())]
        if not entry["cpu_tiers"]["passed"]:
            entry["passed"] = False
            entry["gate"]["status"] = "failed"
            entry["gate"]["failures"].append("cpu tiers: " + "; ".join(entry["cpu_tiers"]["failures"]))


def arm64_parity(artifact, pixels, reference, thresholds, console) -> dict:
    """Bit-exactness of the aarch64 kernels vs x86, and the precision's gate vs the reference."""
    from spnas.arm64 import summary_table, verify_arm64

    with console.step(f"aarch64 parity of {artifact.name} under emulation"):
        result = verify_arm64(artifact, pixels, reference, thresholds=thresholds, progress=console.info)
    print(summary_table(result))
    return result


if __name__ == "__main__":
    sys.exit(main())
