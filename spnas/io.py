"""Atomic artifact writes: a failed or interrupted run leaves no partial file."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from spnas.errors import SpnasError


def check_out_dir(out_dir: str | Path) -> Path:
    """Fail early, in one line, on an output folder that cannot be used; creates nothing."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpnasError(f"--out {out_dir}: exists and is not a directory")
    existing = next((p for p in [out_dir, *out_dir.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise SpnasError(f"--out {out_dir}: {existing} is not a writable directory")
    return out_dir


def ensure_out_dir(out_dir: str | Path) -> Path:
    """Create the output folder, or fail in one line if it is a file or unwritable."""
    out_dir = check_out_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpnasError(f"--out {out_dir}: cannot create directory ({exc.strerror})") from exc
    if not os.access(out_dir, os.W_OK):
        raise SpnasError(f"--out {out_dir}: directory is not writable")
    return out_dir


# Errors of the disk, not of the program: a full disk, a quota, a file size limit, a read-only or
# forbidden folder.  They become one line naming the path; anything else keeps its traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def write_error(exc: OSError, final: str | Path, stage: str | Path | None = None,
                lands_in: str | Path | None = None) -> SpnasError | None:
    """A one-line ``SpnasError`` for a failed write of ``final`` (``None`` if ``exc`` is not a disk error).

    When the failing file lies in ``stage`` (a staging or temporary folder whose contents move into
    ``lands_in``), the message names where it was going to land (hidden components are dropped).
    """
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = Path(final)
    if exc.filename and stage is not None:
        with contextlib.suppress(ValueError):
            parts = Path(os.fsdecode(exc.filename)).relative_to(stage).parts
            where = Path(lands_in or final).joinpath(*(part for part in parts if not part.startswith(".")))
    reason = exc.strerror or os.strerror(exc.errno)
    return SpnasError(f"cannot write {where}: {reason} ({errno.errorcode.get(exc.errno, exc.errno)}); "
                      "nothing was left behind")


@contextlib.contextmanager
def atomic_path(final: str | Path):
    """Yield a temporary sibling path; rename it onto ``final`` only if the block succeeds.

    Works for files and for directory artifacts such as ``.mlpackage``.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise (write_error(exc, final) or exc) from exc
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise SpnasError(f"{final}: exporter produced no output")
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        error = write_error(exc, final, tmp_dir, final.parent)
        if error is None:
            raise
        raise error from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_bytes(final: str | Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | Path, text: str) -> Path:
    return atomic_write_bytes(final, text.encode())


def sha256_file(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_sha256(path: str | Path) -> str | None:
    """A file artifact's sha256 (``spnas-verify`` trusts a file whose hash its export report records); None for
    packages (folders)."""
    return sha256_file(path) if Path(path).is_file() else None


def artifact_size(path: str | Path) -> int:
    """Bytes on disk of a file or of a directory artifact (``.mlpackage``)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
