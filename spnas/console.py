"""Terminal output shared by the CLIs: progress lines, tables, one-line errors and warnings."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings


class Console:
    """Progress and messages on stderr, so stdout carries only tables and requested output."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"spnas: {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """A warning line; ``quiet`` drops it too (every warning is also in report.json's ``warnings``)."""
        if not self.quiet:
            print(f"spnas: warning: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, message: str):
        """Announce a possibly long step, then say how long it took."""
        self.info(f"{message} ...")
        start = time.perf_counter()
        yield
        self.info(f"{message}: done in {time.perf_counter() - start:.1f}s")


def install_warning_format(console: Console) -> None:
    """Show Python warnings (e.g. skipped images, random weights) as one ``spnas: warning:`` line."""

    def show(message, category, filename, lineno, file=None, line=None):
        console.warn(str(message))

    warnings.showwarning = show


def quiet_library_logs() -> None:
    """Libraries' own warning-level log records (torchao's optional kernels, torch's deprecation notes) are not
    ours to show: spnas reports through ``Console``, so a run prints spnas's lines only.  ``--debug`` skips this."""
    import logging

    logging.disable(logging.WARNING)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [headers, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def quiet_stderr():
    """Silence everything written to file descriptor 2 inside the block: C++ log lines (TF's converter, MediaPipe's
    graph setup, XNNPACK) and Python's own writes to ``sys.stderr`` (coremltools' progress bars)."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)


def silenced_stderr(quiet: bool):
    """``--quiet``: the whole run inside ``quiet_stderr``; errors are printed after it, by the CLI."""
    return quiet_stderr() if quiet else contextlib.nullcontext()
