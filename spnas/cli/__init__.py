"""Console entry points. Each keeps heavy imports inside ``main`` so ``--help`` is instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from spnas.errors import SpnasError


def run_cli(body: Callable[[], int], debug: bool) -> int:
    """Turn user errors into one line and exit 2; keep tracebacks for ``--debug``."""
    try:
        return body()
    except SpnasError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no partial artifact was left behind", file=sys.stderr)
        return 130


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate overrides shared by spnas-export and spnas-verify (see ``spnas.verify.thresholds_for``)."""
    parser.add_argument("--min-top1", type=float, metavar="X", help="override the top-1 agreement floor")
    parser.add_argument("--min-sqnr-db", type=float, metavar="Y", help="override the SQNR floor (dB)")
    parser.add_argument("--max-rel-error", type=float, metavar="Z", help="override the relative error ceiling")
