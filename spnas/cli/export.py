"""``spnas-export``: SPNasNet to ONNX / TFLite / CoreML / ExecuTorch, float and int8, with parity proof."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spnas.cli import add_threshold_arguments, add_validation_arguments
from spnas.version import __version__

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
                           "(docs/int8.md, 'ONNX int8 on every CPU')")
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


def request_from_args(args: argparse.Namespace):
    """The parsed flags as the pipeline's ``ExportRequest`` (the same one the Python API builds)."""
    from spnas.pipeline import ExportRequest

    return ExportRequest.from_keywords(**{key: value for key, value in vars(args).items() if key != "debug"})


def main(argv: list[str] | None = None) -> int:
    from spnas.cli import run_command

    return run_command(build_parser(), argv, request_from_args, cli_export)


def cli_export(request) -> int:
    """Run the export, then print its tables; the exit code is the report's (1: a gate failed or ``--strict``
    refused random weights)."""
    from spnas.console import Console, install_warning_format
    from spnas.pipeline import RandomWeightsRefused, run_export
    from spnas.tables import results_tables

    console = Console(request.quiet)
    install_warning_format(console)
    try:
        report = run_export(request)
    except RandomWeightsRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(results_tables(report))
    if report.weights["source"] == "random":
        console.warn("random weights: NOT FOR DEPLOYMENT (int8 gate not applicable)")
    print(f"\nwrote {len(report.artifacts)} artifact(s) and {Path(request.out) / 'report.json'}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
