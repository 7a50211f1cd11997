"""Atomic artifact writes: a failed or interrupted run leaves no partial file."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_path(final: str | Path):
    """Yield a temporary sibling path; rename it onto ``final`` only if the block succeeds.

    Works for files and for directory artifacts such as ``.mlpackage``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise SpnasError(f"{final}: exporter produced no output")
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
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


def artifact_size(path: str | Path) -> int:
    """Bytes on disk of a file or of a directory artifact (``.mlpackage``)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
