"""Console entry points. Each keeps heavy imports inside ``main`` so ``--help`` is instant."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

from spnas.errors import SpnasError


class Terminated(BaseException):
    """SIGTERM as an exception, so staged outputs and temporary files are cleaned up as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated


def run_cli(body: Callable[[], int], debug: bool) -> int:
    """Turn user errors into one line and exit 2; keep tracebacks for ``--debug``.

    SIGINT exits 130 and SIGTERM 143 (128 + the signal), each with one line, after the run's
    cleanup: staged outputs are dropped, so the output folder is as it was.
    """
    from spnas.console import quiet_library_logs

    if not debug:
        quiet_library_logs()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return body()
    except SpnasError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT); nothing partial was left behind", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("error: terminated (SIGTERM); nothing partial was left behind", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, to_request, body) -> int:
    """Parse ``argv``, build the pipeline's request (``to_request(args)``; its ``SpnasError`` is a usage error,
    exit 2 with the usage line), then ``run_cli(body(request))``."""
    args = parser.parse_args(argv)
    try:
        request = to_request(args)
    except SpnasError as exc:
        parser.error(str(exc))
    return run_cli(lambda: body(request), args.debug)


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate overrides shared by spnas-export and spnas-verify (see ``spnas.gates.thresholds_for``)."""
    parser.add_argument("--min-top1", type=float, metavar="X", help="override the top-1 agreement floor")
    parser.add_argument("--min-sqnr-db", type=float, metavar="Y",
                        help="override the SQNR floor (dB); for int8 artifacts that lower the quant plan, a fixed "
                             "floor instead of the default one relative to the plan's simulation")
    parser.add_argument("--max-rel-error", type=float, metavar="Z", help="override the relative error ceiling")
    plan = parser.add_argument_group("int8 plan gates (relative to the same images' int8-vs-float SQNR; "
                                     "docs/parity.md, \"Parity thresholds\")")
    plan.add_argument("--min-pooled-sqnr-db", type=float, metavar="P",
                      help="floor of the plan's simulated SQNR at the pooled features (default 16)")
    plan.add_argument("--simulation-margin-db", type=float, metavar="M",
                      help="an artifact's SQNR against the plan's simulation must exceed the simulation's SQNR "
                           "against float by M dB (default 0)")
    plan.add_argument("--int8-agreement-margin-db", type=float, metavar="M",
                      help="two int8 artifacts of one plan must agree to M dB above the better one's SQNR against "
                           "float (default 0)")
    plan.add_argument("--min-int8-agreement-db", type=float, metavar="D",
                      help="a fixed floor for that pairwise SQNR instead (the rule before relative gates: 38)")


def add_validation_arguments(parser: argparse.ArgumentParser) -> None:
    """Task accuracy on a labelled set (``spnas.validation``), shared by spnas-export and spnas-verify."""
    group = parser.add_argument_group("task accuracy on a labelled validation set")
    group.add_argument("--val", metavar="DIR|CSV",
                       help="one sub-folder per class (named as the classes), or a file,label CSV; must not share "
                            "images with calibration")
    group.add_argument("--max-accuracy-drop", type=float, metavar="PCT",
                       help="fail an artifact whose top-1 drop's upper 95%% bound exceeds PCT percentage points")
    group.add_argument("--val-workers", type=int, metavar="N",
                       help="decoding processes (default: none below 512 images, else up to 4)")


def add_ai_hub_arguments(parser: argparse.ArgumentParser, job: str) -> None:
    """Qualcomm AI Hub's hosted phones (``spnas.bench.aihub``), shared by spnas-bench and spnas-verify."""
    group = parser.add_argument_group("Qualcomm AI Hub (hosted real phones; token from `qai-hub configure`)")
    group.add_argument("--ai-hub", metavar="DEVICE[,DEVICE...]",
                       help=f'run a {job} job on each named device, e.g. "Samsung Galaxy S24,Google Pixel 8"')
    group.add_argument("--ai-hub-devices", metavar="FILE", help="device names, one a line (# comments)")
    group.add_argument("--compute-unit", choices=["cpu", "gpu", "npu"],
                       help="AI Hub --compute_unit (default cpu: the paper's target and what int8 parity describes)")
    group.add_argument("--ai-hub-options", default="", metavar="OPTS",
                       help='extra AI Hub job options, passed through, e.g. "--max_profiler_iterations 50"')
    group.add_argument("--ai-hub-timeout", type=float, default=3600.0, metavar="S",
                       help="give up on jobs not finished after S seconds (default 3600)")
