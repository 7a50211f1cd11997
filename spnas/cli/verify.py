"""``spnas-verify``: the parity gate for CI, over any of our artifacts.

Exit codes: 0 every artifact passes, 1 any artifact fails a threshold, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spnas.cli import add_ai_hub_arguments, add_threshold_arguments, add_validation_arguments
from spnas.version import __version__

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
features >= 16 dB, pairs of artifacts closer to each other than to float (docs/parity.md, "Parity
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


def request_from_args(args: argparse.Namespace):
    """The parsed flags as the pipeline's ``VerifyRequest`` (the same one the Python API builds)."""
    from spnas.pipeline import VerifyRequest

    keywords = {key: value for key, value in vars(args).items() if key not in ("debug", "artifacts")}
    return VerifyRequest.from_keywords(args.artifacts, **keywords)


def main(argv: list[str] | None = None) -> int:
    from spnas.cli import run_command

    return run_command(build_parser(), argv, request_from_args, cli_verify)


def cli_verify(request) -> int:
    """Run the verification, then print its tables and failures; AI Hub job failures exit 2 after the tables."""
    from spnas.console import Console, install_warning_format
    from spnas.pipeline import RandomWeightsRefused, run_verify
    from spnas.pipeline.verify import check_job_failures
    from spnas.tables import results_tables

    install_warning_format(Console(request.quiet))
    try:
        report = run_verify(request, raise_job_failures=False)
    except RandomWeightsRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    entries = [artifact.to_dict() for artifact in report.artifacts]
    print_emulation_tables(entries)
    print(results_tables(report))
    for entry in entries:
        for failure in entry["gate"]["failures"]:
            print(f"FAIL {Path(entry['path']).name}: {failure}")
        if "explain" in entry:
            print_explain(entry, report.int8_plan)
    if any("ai_hub" in entry for entry in entries):
        print(device_table(entries))
    check_job_failures(entries)
    return report.exit_code


def print_emulation_tables(entries: list[dict]) -> None:
    """``--arm64`` and ``--cpu``: each emulated run's table."""
    from spnas.arm64 import summary_table as arm64_table
    from spnas.arm64.tiers import summary_table as tiers_table

    for entry in entries:
        if "arm64" in entry:
            print(arm64_table(entry["arm64"]))
    tiers = {entry["path"]: entry["cpu_tiers"] for entry in entries if "cpu_tiers" in entry}
    if tiers:
        print(tiers_table(tiers))


def device_table(entries: list[dict]) -> str:
    """One row per (artifact, device): the gate against the reference and the agreement with the host."""
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


def print_explain(entry: dict, plan: dict | None, worst: int = 10) -> None:
    """The layers that add the most loss (lowest local SQNR), with the loss accumulated up to each, and the
    plan's simulated SQNR at the pooled features beside the logits."""
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


if __name__ == "__main__":
    sys.exit(main())
