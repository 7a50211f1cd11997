"""One accelerator's report entry and its one-word verdict, shared by every checker module."""

from __future__ import annotations

import contextlib
import logging

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
