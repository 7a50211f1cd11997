"""``spnas-export``: SPNasNet to ONNX / TFLite / CoreML / ExecuTorch, float and int8, with parity proof."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spnas import __version__
from spnas.cli import add_threshold_arguments, add_validation_arguments

EPILOG = """\
examples:
  spnas-export --format tflite --int8
  spnas-export --format all --int8 --weights model.safetensors --calib photos/ --out exports/
  spnas-export --format onnx --int8 --weights hf-hub:timm/spnasnet_100.rmsp_in1k

Weights default to "auto": the Hugging Face cache, else the hub, else random weights
with a warning (random weights are for trying the tool, not for deployment).
Exit codes: 0 all artifacts pass their parity gate, 1 a gate failed, 2 usage or input error.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spnas-export", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=["onnx", "tflite", "coreml", "executorch", "all"],
                        help="target format, or every format whose extra is installed (the others are named)")
    parser.add_argument("--int8", action="store_true", help="also write an int8 post-training-quantized artifact")
    parser.add_argument("--fp16", action="store_true",
                        help="TFLite: also write a float16-weight artifact (CoreML is fp16 by default)")
    parser.add_argument("--weights", default="auto", metavar="W",
                        help='"auto" (default), "random", "hf-hub:ORG/REPO", a timm folder (config.json + '
                             'model.safetensors or pytorch_model.bin), or a .safetensors/.pth/.bin state dict '
                             "with any classifier size")
    parser.add_argument("--labels", metavar="FILE",
                        help="class names, one a line, index-ordered (default: the config's label_names, "
                             "ImageNet-1k for 1000 classes, else class_0..class_K-1)")
    prep = parser.add_argument_group("preprocessing (default: the checkpoint's timm pretrained_cfg)")
    prep.add_argument("--input-size", metavar="S", help="square input size in pixels (at least 32)")
    prep.add_argument("--crop-pct", type=float, metavar="P", help="center-crop fraction: resize to floor(S / P)")
    prep.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="resize filter, as PIL applies it")
    prep.add_argument("--mean", metavar="R,G,B", help="normalisation mean (0..1 scale)")
    prep.add_argument("--std", metavar="R,G,B", help="normalisation std (0..1 scale)")
    parser.add_argument("--calib", metavar="DIR",
                        help="folder of calibration images (recursive; JPEG/PNG/WebP); default: a small embedded set")
    parser.add_argument("--num-calib", type=int, default=200, metavar="N", help="calibration images (default 200)")
    parser.add_argument("--num-parity", type=int, default=50, metavar="N",
                        help="held-out parity images, disjoint from calibration (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration/parity split (default 0)")
    parser.add_argument("--max-image-pixels", type=int, metavar="N",
                        help="refuse (skip with a warning) images over N pixels before decoding them "
                             "(default 89478485, or $SPNAS_MAX_IMAGE_PIXELS)")
    add_threshold_arguments(parser)
    add_validation_arguments(parser)
    parser.add_argument("--fallback", choices=["off", "auto"], default="off",
                        help="auto: when the int8 plan's simulation fails its gate (pooled-feature SQNR, top-1, "
                             "--min-sqnr-db if given), keep the layers that add the most loss in float and re-plan "
                             "(up to 3 simulated rounds), then export every format from that plan")
    parser.add_argument("--fallback-layers", type=int, default=3, metavar="N",
                        help="layers kept in float per fallback round (default 3)")
    parser.add_argument("--plan", metavar="FILE",
                        help="int8: lower this quant_plan.json (from an earlier export) instead of calibrating, "
                             "so the int8 artifacts are reproduced exactly")
    parser.add_argument("--out", default="exports", metavar="DIR", help="output folder (default exports/)")
    parser.add_argument("--strict", action="store_true", help="fail (exit 1) when weights are random")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"spnas {__version__}")
    tflite = parser.add_argument_group("TFLite")
    tflite.add_argument("--uint8-input", action="store_true",
                        help="int8 model takes raw uint8 RGB with normalisation folded into the graph")
    tflite.add_argument("--app", choices=["mediapipe"],
                        help="also write spnasnet_100_{fp32,int8}_mediapipe.tflite, which MediaPipe Tasks' "
                             "ImageClassifier loads as is (uint8 RGB in, softmax probabilities out, labels)")
    executorch = parser.add_argument_group("ExecuTorch")
    executorch.add_argument("--pte-partitioners", action="store_true",
                            help="also ask ExecuTorch's Vulkan and Core ML partitioners which ops of each .pte's "
                                 "graph they would take (report.json accelerators; costs a to_edge per artifact)")
    onnx = parser.add_argument_group("ONNX")
    onnx.add_argument("--dynamic-batch", action="store_true", help="dynamic batch dimension")
    onnx.add_argument("--onnx-int8", choices=["portable", "u8s8"], default="portable",
                      help="int8 weight encoding (same plan, same integers): portable (default) computes the plan "
                           "on every CPU; u8s8 is about 1.7x faster on x86 with VNNI but saturates without VNNI "
                           "(README, 'ONNX int8 on every CPU')")
    onnx.add_argument("--coreml-ep", action="store_true",
                      help="also write spnasnet_100_fp32_coreml_ep.onnx, which ONNX Runtime's Core ML execution "
                           "provider takes whole in both its model formats (the int8 QDQ model falls off it)")
    coreml = parser.add_argument_group("CoreML")
    coreml.add_argument("--fp32", action="store_true", help="float32 mlprogram instead of the float16 default")
    coreml.add_argument("--image-input", action="store_true",
                        help="ct.ImageType input with scale/bias, so an app passes a CVPixelBuffer")
    coreml.add_argument("--coreml-int8-mode", choices=["w8a8", "w8"], default="w8a8",
                        help="int8 variant: weights and activations (default) or weights only")
    executorch = parser.add_argument_group("ExecuTorch")
    executorch.add_argument("--executorch-int8", choices=["plan", "pt2e"], default="plan",
                            help="int8 .pte: lower the export's quant plan like every other format (default), or "
                                 "ExecuTorch's own PT2E flow (XNNPACKQuantizer, HistogramObserver calibration)")
    android = parser.add_argument_group("Android")
    android.add_argument("--android-assets", metavar="DIR",
                         help="copy the int8 (else float) .tflite, labels, preprocessing JSON and a golden pair here")
    return parser


def usage_problem(args: argparse.Namespace) -> str | None:
    """The first flag combination that makes no sense (a usage error for the CLI, a SpnasError for the API)."""
    checks = ((args.num_calib < 1, "--num-calib must be at least 1"),
              (args.num_parity < 1, "--num-parity must be at least 1"),
              (args.android_assets and args.format not in ("tflite", "all"),
               "--android-assets needs --format tflite or all"),
              (args.app and args.format not in ("tflite", "all"), "--app needs --format tflite or all"),
              (args.coreml_ep and args.format not in ("onnx", "all"), "--coreml-ep needs --format onnx or all"),
              (args.pte_partitioners and args.format not in ("executorch", "all"),
               "--pte-partitioners needs --format executorch or all"),
              (args.fallback == "auto" and not args.int8, "--fallback auto needs --int8"),
              (args.plan and not args.int8, "--plan needs --int8"),
              (args.fallback_layers < 1, "--fallback-layers must be at least 1"))
    return next((message for failed, message in checks if failed), None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problem := usage_problem(args):
        parser.error(problem)
    from spnas.cli import run_cli

    return run_cli(lambda: cli_export(args), args.debug)


def cli_export(args: argparse.Namespace) -> int:
    """``run_export`` with the tables and the exit code of the command line."""
    from spnas.verify import print_results

    report = run_export(args)
    if report is None:
        return 1
    entries = print_results(report)
    if report.weights["source"] == "random":
        print("spnas: warning: random weights: NOT FOR DEPLOYMENT (int8 gate not applicable)", file=sys.stderr)
    print(f"\nwrote {len(entries)} artifact(s) and {Path(args.out) / 'report.json'}")
    return report.exit_code


def run_export(args: argparse.Namespace):
    """Check the request, then run it into a stage that is moved into ``--out`` only if it all succeeds.

    Returns the ``spnas.report.Report`` written as report.json, or None when ``--strict`` refused random weights.
    """
    from spnas.console import Console, install_warning_format
    from spnas.export import format_module, installed_formats
    from spnas.intake import set_pixel_limit
    from spnas.io import check_out_dir
    from spnas.quantize import load_plan
    from spnas.staging import staged_output
    from spnas.validation import load_valset

    console = Console(args.quiet)
    install_warning_format(console)
    set_pixel_limit(args.max_image_pixels)
    if args.format == "all":
        modules, skipped = installed_formats()
    else:
        modules, skipped = {args.format: format_module(args.format)}, {}  # fail early on a missing extra
    out_dir = check_out_dir(args.out)
    plan = load_plan(args.plan) if args.plan else None  # a bad plan fails before any weights or images load
    with console.step(f"loading weights ({args.weights})"):
        source, caught = resolve_source_of(args)
    valset = load_valset(args.val, source.class_names) if args.val else None
    with staged_output(out_dir) as stage:
        return export_into(stage, args, modules, skipped, source, caught, valset, plan, console)


def preprocessing_overrides(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in ("input_size", "crop_pct", "interpolation", "mean", "std")}


def resolve_source_of(args: argparse.Namespace):
    """The checkpoint, preprocessing and class names, with the warnings raised while resolving them."""
    import warnings

    from spnas.source import resolve_source

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = resolve_source(args.weights, labels=args.labels, overrides=preprocessing_overrides(args))
    return source, [str(w.message) for w in caught]


def export_into(stage, args: argparse.Namespace, modules: dict, skipped: dict, source, caught: list[str], valset, plan,
                console):
    """The export itself: every file goes into ``stage``; returns its ``Report`` (None: ``--strict`` refused)."""
    import warnings

    from spnas import create_model
    from spnas.accelerators import ACCELERATED_FORMATS
    from spnas.accelerators import check as check_accelerators
    from spnas.export import ExportContext
    from spnas.images import split_images
    from spnas.io import artifact_sha256, artifact_size
    from spnas.report import Report, build_report, write_report
    from spnas.verify import gate_logits, gate_lowering, int8_agreement, lowers_plan, simulate_plan, thresholds_for

    spec = source.spec
    with warnings.catch_warnings(record=True) as more:
        warnings.simplefilter("always")
        with console.step("loading calibration and parity images"):
            calib, parity = split_images(args.calib, args.num_calib, args.num_parity, args.seed, spec)
        if args.calib is None and not (args.int8 and plan is not None):
            warnings.warn("calibrating on the small embedded image set; 200+ images from your deployment "
                          "domain (--calib DIR) calibrate int8 better", stacklevel=1)
        console.info(f"{len(calib)} calibration images, {len(parity)} held-out parity images from {calib.root}")
        model = create_model(source.checkpoint, calib_pixels=calib.pixels, spec=spec)
    weights = model.weights_info
    if valset is not None:
        from spnas.validation import check_disjoint

        with console.step(f"checking {len(valset)} validation images against calibration (sha256)"):
            check_disjoint(valset, calib.manifest())
    messages = ([f"--format all: skipped {reason}" for reason in skipped.values()] + caught + source.warnings
                + [str(w.message) for w in more])
    if weights.warning and weights.warning not in messages:
        messages.append(weights.warning)
    for message in messages:
        console.warn(message)
    if weights.is_random and args.strict:
        console.warn("--strict: refusing random weights")
        return None
    from spnas.reference import TorchRunner

    reference = TorchRunner(model, spec).run(parity.pixels)
    options = {k: getattr(args, k) for k in ("uint8_input", "app", "dynamic_batch", "onnx_int8", "fp32",
                                             "image_input", "coreml_int8_mode", "executorch_int8",
                                             "pte_partitioners", "coreml_ep")}
    entries, int8_logits = [], {}
    fallback_block, int8_plan, simulated = None, None, None
    if args.fallback == "auto" and plan is None and not weights.is_random:
        plan, fallback_block = plan_fallback(model, spec, calib.pixels, parity.pixels, args, console)
    for name, module in modules.items():
        ctx = ExportContext(model=model, weights=weights, preprocessing=spec, calibration_pixels=calib.pixels,
                            out_dir=stage, int8=args.int8, fp16=args.fp16, options=options, progress=console.info,
                            quant_plan=plan, class_names=source.class_names)
        with console.step(f"exporting {name}"):
            artifacts = module.export(ctx)
        plan = ctx.quant_plan  # computed by the first format that lowers it, then shared by the others
        for artifact in artifacts:
            lowering = lowers_plan({"precision": artifact.precision, **artifact.entry, "details": artifact.details})
            if lowering and int8_plan is None:
                with console.step(f"simulating the int8 plan on {len(parity)} held-out images"):
                    int8_plan, simulated = simulate_plan(model, plan, parity.pixels, spec, args)
            with console.step(f"parity of {artifact.path.name} on {len(parity)} held-out images"):
                logits = module.load(artifact.path).run(parity.pixels)
                result = (gate_lowering(logits, reference, int8_plan["simulation"], simulated, args,
                                        weights.is_random) if lowering
                          else gate_logits(logits, reference, artifact.precision, random_weights=weights.is_random,
                                           thresholds=thresholds_for(artifact.precision, args)))
            entry = {"format": artifact.format, "precision": artifact.precision,
                     "path": str(Path(artifact.path).relative_to(stage)),
                     "size_bytes": artifact_size(artifact.path), "sha256": artifact_sha256(artifact.path),
                     **artifact.entry, **result, "details": artifact.details}
            if artifact.format in ACCELERATED_FORMATS and "accelerators" not in entry:
                with console.step(f"accelerator checks of {artifact.path.name}"):
                    entry["accelerators"] = check_accelerators(artifact.path, artifact.format)
            if lowering:
                int8_logits[entry["path"]] = logits
                if fallback_block:
                    entry["fallback"] = fallback_block
            entries.append(entry)
    agreement = int8_agreement(int8_logits, reference, args.min_int8_agreement_db, args.int8_agreement_margin_db)
    validation = None
    if valset is not None:
        from spnas.validation import validate_entries

        validation = validate_entries(valset, spec, TorchRunner(model, spec), entries, stage, args, console)
    report = Report.from_dict(build_report(weights=weights, preprocessing=spec, calibration=calib,
                                           parity_images=parity, artifacts=entries, warnings=messages,
                                           classes=source.classes_report(), overrides=source.overrides,
                                           validation=validation, int8_agreement=agreement, int8_plan=int8_plan),
                              exit_code=0 if all(entry["passed"] is not False for entry in entries)
                              and (agreement is None or agreement["passed"]) else 1)
    write_report(report, stage / "report.json")
    if args.android_assets:
        sync_android_assets(stage, entries, args.android_assets, spec, source.class_names, console)
    return report


def plan_fallback(model, spec, calib_pixels, parity_pixels, args, console):
    """``--fallback auto``: the plan whose simulation passes the plan's gate (``spnas.quantize.fallback``), which
    every format then lowers, and the fallback block of each int8 entry (None: the first plan passed)."""
    from spnas.folding import fold_batchnorm
    from spnas.preprocess import normalize
    from spnas.quantize import PixelBatches, build_plan
    from spnas.quantize.fallback import fallback
    from spnas.verify import plan_thresholds

    folded, reader = fold_batchnorm(model), PixelBatches(calib_pixels, spec)
    with console.step(f"int8 plan on {len(calib_pixels)} images"):
        plan = build_plan(folded, reader, spec, weights_sha256=model.weights_info.sha256)
    with console.step("fallback: simulating the plan against the int8 gate"):
        return fallback(folded, plan, reader, spec, normalize(parity_pixels, spec), plan_thresholds(args), args,
                        args.fallback_layers, console.info)


def sync_android_assets(stage, entries, assets_dir, spec, class_names, console) -> None:
    """Write the app's assets all or nothing too: staged in ``assets_dir``, moved in when complete."""
    from spnas.android import sync_assets
    from spnas.io import check_out_dir
    from spnas.staging import staged_output

    tflite = [e for e in entries if e["format"] == "tflite"]
    chosen = next((e for e in tflite if e["precision"] == "int8"), tflite[0])
    with console.step(f"syncing Android assets into {assets_dir}"), staged_output(check_out_dir(assets_dir)) as assets:
        sync_assets(stage / chosen["path"], assets, spec, class_names=class_names)


if __name__ == "__main__":
    sys.exit(main())
