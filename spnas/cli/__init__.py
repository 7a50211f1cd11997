"""Console entry points. Each keeps heavy imports inside ``main`` so ``--help`` is instant."""

from __future__ import annotations

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
