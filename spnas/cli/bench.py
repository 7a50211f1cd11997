"""``spnas-bench``: SPNasNet latency on this machine, on the paper's Pixel 1, and on your phone."""

from __future__ import annotations

import argparse
import sys

from spnas.cli import add_ai_hub_arguments
from spnas.version import __version__

EPILOG = """\
examples:
  spnas-bench exports/spnasnet_100_fp32.tflite exports/spnasnet_100_int8.tflite --threads 1,2
  spnas-bench exports/spnasnet_100_int8.tflite exports/spnasnet_100_int8.onnx pytorch --json bench.json --plot bench.png
  spnas-bench --target pixel1
  spnas-bench --adb --benchmark-binary android_aarch64_benchmark_model --taskset f0 exports/spnasnet_100_int8.tflite
  spnas-bench --adb-serial all --benchmark-binary android_aarch64_benchmark_model exports/spnasnet_100_int8.tflite
  spnas-bench --ai-hub "Samsung Galaxy S24,Google Pixel 8" exports/*.tflite --json fleet.json --plot fleet.png
  spnas-bench --import host.json fleet.json spnas-bench-android.json --json all.json --plot all.png

Host mode times only the runtime call (LiteRT with XNNPACK for .tflite, ONNX Runtime for .onnx,
ExecuTorch with XNNPACK for .pte, PyTorch eager for the pseudo-artifact "pytorch"), each artifact in
its own process, interleaved in rounds; "vs first" is each artifact's median over the first one's at
the same thread count.
--target pixel1 predicts Pixel 1 latency from the Single-Path NAS authors' per-layer table
(pixel1_runtime_model.json from github.com/dstamoulis/single-path-nas, nas-search/, Apache-2.0),
found through --lut, $SPNAS_PIXEL1_LUT or ../shared/data.
--adb pushes the models and LiteRT's benchmark_model (your --benchmark-binary) to /data/local/tmp
and runs it there; --adb-serial S1,S2,... (or all) does so on several phones in parallel.
--ai-hub profiles the artifacts on Qualcomm AI Hub's hosted phones through the qai-hub client
(pip install 'spnas[hub]'; the token is the client's own: `qai-hub configure --api_token TOKEN`).
--import reads reports written elsewhere (spnas-bench's own --json, the Android demo app's JSON, e.g.
from Firebase Test Lab) into one table, JSON and chart; it needs no device and no network.
--plot draws one chart across devices, formats and precisions: a group per format + precision, a
bar per device / thread count / compute unit.
Exit codes: 0 success, 2 usage or input error, or a device whose job failed (the others are still
reported and written).
"""


def thread_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,2,4, got {text!r}")
    return list(dict.fromkeys(values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spnas-bench", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                        help='.tflite / .onnx / .pte files, or "pytorch" for the PyTorch eager reference')
    parser.add_argument("--threads", type=thread_list, default=[1], metavar="N[,N...]",
                        help="runtime thread counts, e.g. 1,2,4 (default 1, as the paper)")
    parser.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs first (default 10)")
    parser.add_argument("--runs", type=int, default=50, metavar="N", help="timed runs per artifact (default 50)")
    parser.add_argument("--rounds", type=int, default=10, metavar="N",
                        help="host: interleave the runs in this many rounds (default 10)")
    parser.add_argument("--weights", default="random", metavar="W",
                        help='checkpoint for the "pytorch" reference (default random: latency does not depend '
                             "on weight values)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG",
                        help="write one latency chart across devices, formats and precisions (needs matplotlib)")
    parser.add_argument("--import", dest="imports", nargs="+", metavar="FILE",
                        help="read reports measured elsewhere (spnas-bench --json, the Android demo app's JSON) "
                             "into one table, JSON and chart")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"spnas {__version__}")
    target = parser.add_argument_group("paper target")
    target.add_argument("--target", choices=["pixel1"], help="predict latency on the paper's phone from its table")
    target.add_argument("--lut", metavar="PATH", help="pixel1_runtime_model.json (default: $SPNAS_PIXEL1_LUT, then "
                                                      "../shared/data)")
    target.add_argument("--input-size", type=int, metavar="S",
                        help="your model's input size (e.g. report.json preprocessing.input_size); the table was "
                             "measured at 224, so other sizes get \"not applicable\" instead of a number")
    device = parser.add_argument_group("Android phone over adb")
    device.add_argument("--adb", action="store_true", help="run LiteRT's benchmark_model on a connected phone")
    device.add_argument("--serial", metavar="S", help="adb device serial (default: the only device)")
    device.add_argument("--adb-serial", metavar="S1,S2,...|all",
                        help="several phones at once, in parallel, one row per phone (all: every phone `adb devices` "
                             "lists as 'device'); implies --adb")
    device.add_argument("--benchmark-binary", metavar="PATH",
                        help="benchmark_model built for the phone, e.g. android_aarch64_benchmark_model")
    device.add_argument("--taskset", metavar="MASK", help="pin to CPUs with a hex mask, e.g. f0 for big cores")
    device.add_argument("--no-xnnpack", dest="use_xnnpack", action="store_false",
                        help="pass --use_xnnpack=false (default: --use_xnnpack=true)")
    device.add_argument("--benchmark-arg", action="append", default=[], metavar="ARG",
                        help="extra benchmark_model flag, repeatable, e.g. --benchmark-arg=--enable_op_profiling=true")
    add_ai_hub_arguments(parser, "profile")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.adb_serial is not None:
        if args.serial:
            parser.error("give --serial S for one phone or --adb-serial S1,S2,... for several, not both")
        args.adb = True
    if args.warmup < 0 or args.runs < 1 or args.rounds < 1:
        parser.error("--warmup must be >= 0, --runs and --rounds >= 1")
    device_only = [flag for flag, value in (("--serial", args.serial), ("--benchmark-binary", args.benchmark_binary),
                                            ("--taskset", args.taskset), ("--no-xnnpack", not args.use_xnnpack),
                                            ("--benchmark-arg", args.benchmark_arg)) if value]
    if args.imports:
        runs = [flag for flag, value in (("ARTIFACT", args.artifacts), ("--target", args.target), ("--adb", args.adb),
                                         ("--ai-hub", args.ai_hub or args.ai_hub_devices), ("--lut", args.lut),
                                         *((flag, True) for flag in device_only)) if value]
        if runs:
            parser.error(f"--import reads finished reports; it takes no {runs[0]}")
    elif args.target:
        if args.artifacts or args.adb:
            parser.error("--target pixel1 takes no artifacts and no --adb (it predicts from the architecture)")
        return
    elif args.lut or args.input_size is not None:
        parser.error(f"{'--lut' if args.lut else '--input-size'} goes with --target pixel1")
    elif not args.artifacts:
        parser.error("give at least one ARTIFACT (or --target pixel1, or --import FILE)")
    if args.adb and not args.benchmark_binary:
        parser.error("--adb needs --benchmark-binary PATH (LiteRT's benchmark_model for the phone)")
    if device_only and not args.adb:
        parser.error(f"{device_only[0]} goes with --adb")
    if (args.ai_hub or args.ai_hub_devices) and args.adb:
        parser.error("--ai-hub and --adb are separate runs; give one")
    from spnas.bench.aihub import misused_flag

    misused = misused_flag(args.compute_unit, args.ai_hub_options, args.ai_hub_timeout)
    if misused and not (args.ai_hub or args.ai_hub_devices):
        parser.error(f"{misused} goes with --ai-hub")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    from spnas.cli import run_cli

    return run_cli(lambda: bench(args), args.debug)


def bench(args: argparse.Namespace) -> int:
    from spnas.console import Console

    console = Console(args.quiet)
    if args.target:
        return pixel1(args)
    if args.imports:
        from pathlib import Path

        from spnas.bench.imported import import_reports

        document = import_reports([Path(p) for p in args.imports])
        devices = {r["device_name"] for r in document["results"]}
        write_outputs(document, args, f"latency on {len(devices)} device(s), from {len(args.imports)} report(s)")
        return 0
    if args.ai_hub or args.ai_hub_devices:
        return ai_hub(args)
    if args.adb_serial is not None:
        return adb_fleet(args)
    if args.adb:
        from pathlib import Path

        from spnas.bench.adb import run_adb

        document = run_adb([Path(a) for a in args.artifacts], Path(args.benchmark_binary), args.threads, args.warmup,
                           args.runs, serial=args.serial, taskset=args.taskset, use_xnnpack=args.use_xnnpack,
                           extra_args=args.benchmark_arg, progress=console.info)
        title = f"benchmark_model on {document['device'].get('model') or 'device'}"
    else:
        from spnas.bench.host import parse_targets, run_host

        targets = parse_targets(args.artifacts, args.weights)
        document = run_host(targets, args.threads, args.warmup, args.runs, args.rounds, console.info)
        title = f"host latency ({document['machine'].get('cpu_model') or document['machine']['machine']})"
    write_outputs(document, args, title)
    return 0


def ai_hub(args: argparse.Namespace) -> int:
    """Profile jobs on the fleet; finished devices are reported and written even when others failed."""
    from pathlib import Path

    from spnas.bench.aihub import device_names, run_ai_hub
    from spnas.console import Console
    from spnas.errors import SpnasError

    document = run_ai_hub([Path(a) for a in args.artifacts], device_names(args.ai_hub, args.ai_hub_devices),
                          compute_unit=args.compute_unit or "cpu", options=args.ai_hub_options,
                          timeout=args.ai_hub_timeout, progress=Console(args.quiet).info)
    write_outputs(document, args, f"AI Hub profile jobs (--compute_unit {document['settings']['compute_unit']})")
    failed = [r for r in document["results"] if r["status"] == "failed"]
    if failed:
        raise SpnasError(f"{len(failed)} of {len(document['results'])} AI Hub job(s) failed (reported as failed): "
                         + "; ".join(f"[{r['device_name']}] {r['artifact']}: {r['failure']}" for r in failed))
    return 0


def adb_fleet(args: argparse.Namespace) -> int:
    """Every phone in parallel; the phones that finished are reported and written even when others failed."""
    from pathlib import Path

    from spnas.bench.adb_fleet import resolve_serials, run_adb_fleet
    from spnas.console import Console
    from spnas.errors import SpnasError

    document = run_adb_fleet([Path(a) for a in args.artifacts], Path(args.benchmark_binary), args.threads,
                             args.warmup, args.runs, resolve_serials(args.adb_serial), taskset=args.taskset,
                             use_xnnpack=args.use_xnnpack, extra_args=args.benchmark_arg,
                             progress=Console(args.quiet).info)
    write_outputs(document, args, f"benchmark_model on {len(document['settings']['serials'])} phone(s)")
    failed = list(dict.fromkeys((r["serial"], r["failure"]) for r in document["results"] if r["status"] == "failed"))
    if failed:
        raise SpnasError(f"{len(failed)} of {len(document['settings']['serials'])} phone(s) failed (reported as "
                         "failed): " + "; ".join(f"[{serial}] {reason}" for serial, reason in failed))
    return 0


def pixel1(args: argparse.Namespace) -> int:
    from spnas.arch import INPUT_SIZE
    from spnas.bench.pixel1 import breakdown_table, predict

    if args.input_size is not None and args.input_size != INPUT_SIZE:
        reason = (f"not applicable: the authors' Pixel 1 table was measured at {INPUT_SIZE}x{INPUT_SIZE}; its "
                  f"per-layer latencies are not valid at {args.input_size}x{args.input_size}, so nothing is predicted")
        print(reason)
        if args.json:
            write_json({"spnas_version": __version__, "mode": "pixel1", "input_size": args.input_size,
                        "predicted_ms": None, "status": reason}, args.json)
        return 0
    prediction = predict(args.lut)
    print(breakdown_table(prediction))
    document = {"spnas_version": __version__, "mode": "pixel1", **prediction.to_dict()}
    if args.json:
        write_json(document, args.json)
    if args.plot:
        print("note: --plot applies to measured runs; nothing plotted for --target pixel1", file=sys.stderr)
    return 0


def write_outputs(document: dict, args: argparse.Namespace, title: str) -> None:
    from spnas.bench import results_table
    from spnas.bench.chart import plot_latency

    print(results_table(document["results"]))
    if args.json:
        write_json(document, args.json)
    if args.plot:
        plot_latency(document["results"], args.plot, title)
        print(f"wrote {args.plot}")


def write_json(document: dict, path: str) -> None:
    import json

    from spnas.io import atomic_write_text

    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
