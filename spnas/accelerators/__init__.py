"""Will an artifact stay on the phone's accelerators?  The official static checkers, per format.

One entry per delegate or execution provider that can take the format, in one schema::

    {"checker": "name version", "ops_total": int, "ops_supported": int, "partitions": int,
     "unsupported": [{"op", "reason"}], "verdict": VERDICT, "messages": [the checker's own words]}

- ``.tflite``: LiteRT's GPU delegate (``spnas.accelerators.litert_gpu``: TF's model analyzer);
- ``.onnx``: ORT's NNAPI and Core ML execution providers (``spnas.accelerators.ort_mobile``: ORT's
  mobile usability checker);
- ``.pte``: the XNNPACK delegate of the program and the other ExecuTorch partitioners that run on
  Linux (``spnas.accelerators.executorch_partitioners``).

A static check reads the graph against the accelerator's op list; it proves an op would be
refused, not that an accepted one runs fast or exactly on a device (AI Hub's ``--compute-unit``
runs are that check).  Each checker module imports its runtime lazily.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

# One word per accelerator for the tables: every op in one partition; most ops in at most two
# partitions; more than two partitions (the copies between them cost more than the accelerator
# saves, as ORT's checker says); no op; the checker cannot run here.
VERDICTS = ("full", "partial", "fragmented", "none", "unchecked")


def verdict(ops_total: int, ops_supported: int, partitions: int) -> str:
    if ops_supported == 0:
        return "none"
    if partitions > 2:
        return "fragmented"
    return "full" if ops_supported == ops_total and partitions == 1 else "partial"


def entry(checker: str, ops_total: int, ops_supported: int, partitions: int, unsupported: list[dict],
          messages: list[str], **extra) -> dict:
    """One accelerator's report entry, its verdict computed from the counts."""
    return {"checker": checker, "ops_total": int(ops_total), "ops_supported": int(ops_supported),
            "partitions": int(partitions), "unsupported": unsupported,
            "verdict": verdict(ops_total, ops_supported, partitions), "messages": messages, **extra}


def unchecked(checker: str, reason: str) -> dict:
    """An accelerator whose checker cannot run here, and why."""
    return {"checker": checker, "ops_total": None, "ops_supported": None, "partitions": None, "unsupported": [],
            "verdict": "unchecked", "messages": [reason]}


ACCELERATED_FORMATS = ("tflite", "onnx", "executorch")  # the formats whose report entries carry ``accelerators``


class LogLines(logging.Handler):
    """Keeps a checker's log records as lines: its own words for ``messages``."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(line.strip() for line in record.getMessage().splitlines() if line.strip())


@contextlib.contextmanager
def log_lines(logger: logging.Logger):
    """The lines ``logger`` receives inside the block; the CLI's ``logging.disable`` (``spnas.console``) is
    lifted meanwhile, so a checker that speaks through logging is heard by us, not printed."""
    handler, disabled = LogLines(), logging.root.manager.disable
    logger.addHandler(handler)
    logging.disable(logging.NOTSET)
    try:
        yield handler.lines
    finally:
        logging.disable(disabled)
        logger.removeHandler(handler)


def check(path: str | Path, fmt: str) -> dict | None:
    """``{accelerator: entry}`` of one artifact file, from the checkers that read the file itself
    (None for a format without one here: CoreML packages; ``.pte`` entries come from the export)."""
    if fmt == "tflite":
        from spnas.accelerators.litert_gpu import check_gpu

        return {"litert_gpu": check_gpu(path)}
    if fmt == "onnx":
        from spnas.accelerators.ort_mobile import check_ort_mobile

        return check_ort_mobile(path)
    return None


def verdict_table(entries: list[dict]) -> str:
    """One row per artifact, one word per accelerator ("-": the format cannot go there)."""
    from spnas.console import format_table

    names = list(dict.fromkeys(name for entry in entries for name in entry.get("accelerators") or {}))
    rows = [[Path(entry["path"]).name, *(entry["accelerators"].get(name, {}).get("verdict", "-") for name in names)]
            for entry in entries if entry.get("accelerators")]
    return ("\naccelerators (static checks of the graph against each delegate's op list; a device run is the proof):\n"
            + format_table(["artifact", *names], rows))
