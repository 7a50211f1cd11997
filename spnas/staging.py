"""All-or-nothing output folders: a run writes into a stage inside ``--out``, moved in only at the end.

``spnas-export`` (and the Python API) wrap their whole body in ``staged_output(out_dir)``; every
exporter writes under ``ctx.out_dir``, which is the stage.  So a run that fails, is interrupted
(SIGINT, SIGTERM) or hits a full or read-only disk leaves ``--out`` exactly as it was: no new
artifact, no temporary file, the earlier ``report.json`` still true of the files beside it.

Two runs into one folder do not interleave: the stage is guarded by an exclusive ``flock`` on the
folder itself (no lock file is left behind, and the kernel drops the lock of a killed run), so a
second run stops at once with "another export is writing here" (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import tempfile
from pathlib import Path

from spnas.errors import SpnasError
from spnas.io import ensure_out_dir, write_error

STAGE_PREFIX = ".spnas-stage-"
REPORT_NAME = "report.json"  # moved in last, after every artifact it describes


@contextlib.contextmanager
def signals_held():
    """Defer SIGINT/SIGTERM while a few renames or a cleanup run, so they are not cut in half."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def lock_folder(folder: Path) -> int:
    """An exclusive lock on ``folder`` (a descriptor to close), or a one-line error if another run has it."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SpnasError(f"--out {folder}: another export is writing here; wait for it or choose another "
                             "--out") from None
        raise
    return descriptor


def commit(stage: Path, out_dir: Path) -> list[Path]:
    """Move the stage's outputs into ``out_dir``, replacing same-named ones; ``report.json`` last."""
    replaced = stage / ".replaced"
    names = sorted((p.name for p in stage.iterdir() if not p.name.startswith(".")), key=lambda n: n == REPORT_NAME)
    moved = []
    with signals_held():
        for name in names:
            final = out_dir / name
            if final.is_dir() and not final.is_symlink():  # os.replace cannot replace a non-empty directory
                replaced.mkdir(exist_ok=True)
                os.replace(final, replaced / name)
            os.replace(stage / name, final)
            moved.append(final)
    return moved


@contextlib.contextmanager
def staged_output(out_dir: str | Path):
    """Yield a stage folder inside ``out_dir``; move its contents into ``out_dir`` only if the block succeeds.

    On any failure or interrupt the stage is removed, and ``out_dir`` too if this run created it;
    an ``OSError`` from a full or read-only disk becomes a one-line ``SpnasError`` naming the path.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    ensure_out_dir(out_dir)
    try:
        descriptor = lock_folder(out_dir)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    stage = None
    try:
        for stale in out_dir.glob(f"{STAGE_PREFIX}*"):  # left by a killed run: we hold the lock, so it is dead
            shutil.rmtree(stale, ignore_errors=True)
        try:
            stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out_dir))
            yield stage
            commit(stage, out_dir)
        except OSError as exc:
            error = write_error(exc, out_dir, stage)
            if error is None:
                raise
            raise error from exc
        except SpnasError as exc:  # name the place in --out, not the stage, e.g. in atomic_path's errors
            if stage is None or f"{stage}{os.sep}" not in str(exc):
                raise
            raise SpnasError(str(exc).replace(f"{stage}{os.sep}", f"{out_dir}{os.sep}")) from exc
    finally:
        with signals_held():
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()
            os.close(descriptor)
