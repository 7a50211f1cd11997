"""Artifact intake: open artifacts someone hands us without a native crash or a runtime's log spam.

The format modules already turn a runtime's Python exceptions (a truncated flatbuffer, a text
file named ``.onnx``, a package without its weights) into one line. Two things they cannot
catch in-process: a native crash (a malformed model that passes the runtime's verifier and
then faults in C++) and the runtime's own log lines on stderr. So ``probe`` first loads and runs
each artifact once in a forked child whose stdout and stderr are captured: a child killed by a
signal becomes one line naming the artifact and the signal, a child's error becomes that error,
and only then does the caller's process load the artifact for real.

The fork happens before the caller has started any runtime thread pool (``spnas-verify`` probes
first), so the child starts from a clean process image; each child exits with ``os._exit``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import tempfile
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError

PROBE_TIMEOUT_S = 300.0
NATIVE_FORMATS = ("tflite", "onnx", "executorch")  # runtimes in C++; CoreML runs in spnas.mil_eval (numpy) here


def unprobed(paths: list[Path]) -> list[Path]:
    """The native runtimes' artifacts that their own export did not already run: spnas-export's parity step
    loaded and ran every file whose sha256 the ``report.json`` beside it records (each folder's report read once)."""
    from spnas.export import format_of
    from spnas.io import sha256_file
    from spnas.report import read_report

    recorded: dict[Path, set] = {}
    for folder in {path.parent for path in paths}:
        try:
            entries = read_report(folder / "report.json")["artifacts"]
        except SpnasError:
            entries = []
        recorded[folder] = {(Path(str(e.get("path", ""))).name, e.get("sha256"))
                            for e in entries if isinstance(e, dict)}
    return [path for path in paths if format_of(path) in NATIVE_FORMATS
            and (path.name, sha256_file(path)) not in recorded[path.parent]]


def require_spnas_metadata(runner, path: Path) -> None:
    """Parity needs the preprocessing an artifact was exported with: refuse artifacts spnas did not write."""
    if "spnas.precision" not in (getattr(runner, "metadata", None) or {}):
        raise SpnasError(f"{path}: not written by spnas-export (it carries no spnas metadata: preprocessing, "
                         "weights, precision); spnas-verify checks spnas artifacts only")


def probe_input(runner) -> np.ndarray:
    """One mid-grey crop of the artifact's own input size (every native runner reads its spec back as ``spec``)."""
    size = runner.spec.input_size
    return np.full((1, size, size, 3), 128, dtype=np.uint8)


def _probe_child(paths: list[Path], report_fd: int) -> None:
    """In the child: load and run each artifact once, reporting one JSON line per step to the parent."""
    from spnas.export import load_runner

    def send(record: dict) -> None:
        os.write(report_fd, (json.dumps(record) + "\n").encode())

    for path in paths:
        send({"path": str(path), "state": "loading"})
        try:
            runner = load_runner(path)
            require_spnas_metadata(runner, path)
            runner.run(probe_input(runner))
        except SpnasError as exc:
            send({"path": str(path), "state": "error", "message": str(exc)})
            continue
        except Exception as exc:  # a runtime's own exception type: one line, with the runtime's reason
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            send({"path": str(path), "state": "error", "message": f"{path}: cannot be run ({reason})"})
            continue
        send({"path": str(path), "state": "ok"})


def probe(paths: list[Path], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Load and run every artifact once in a forked child; raise ``SpnasError`` for the first that fails or
    crashes.  What the runtimes print meanwhile stays in the child's captured stderr."""
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as captured:
        pid = os.fork()
        if pid == 0:  # child: never returns into the caller's stack
            code = 0
            try:
                faulthandler.disable()  # a crash is reported by the parent, by signal name, not as a C traceback
                os.close(read_fd)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(captured.fileno(), 2)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _probe_child(paths, write_fd)
            except BaseException:
                code = 70
            os._exit(code)
        os.close(write_fd)
        records = _read_records(read_fd, pid, timeout_s)
        _, status = os.waitpid(pid, 0)
        captured.seek(0)
        log = captured.read().decode(errors="replace")
    _raise_for(records, status, log, paths)


def _read_records(read_fd: int, pid: int, timeout_s: float) -> list[dict]:
    import select
    import time

    deadline = time.monotonic() + timeout_s
    buffer = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                buffer += b'{"state": "timeout"}\n'
                break
            ready, _, _ = select.select([pipe], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = pipe.read(65536)
            if not chunk:
                break
            buffer += chunk
    return [json.loads(line) for line in buffer.decode().splitlines() if line.strip()]


def _raise_for(records: list[dict], status: int, log: str, paths: list[Path]) -> None:
    """The first failure among the child's records, or its death while an artifact was in hand."""
    for record in records:
        if record["state"] == "error":
            raise SpnasError(record["message"])
    if records and records[-1]["state"] == "timeout":
        current = next((r["path"] for r in reversed(records) if r["state"] == "loading"), paths[0])
        raise SpnasError(f"{current}: the runtime did not finish loading and running it within the probe timeout")
    current = records[-1]["path"] if records and records[-1]["state"] == "loading" else None
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        last = _last_line(log)
        where = current or "an artifact"
        raise SpnasError(f"{where}: the runtime crashed ({name}) loading or running it; the file is corrupt or "
                         "not one spnas can run" + (f" (runtime said: {last})" if last else ""))
    if current or os.WEXITSTATUS(status) != 0:
        raise SpnasError(f"{current or paths[0]}: the artifact probe failed (exit {os.WEXITSTATUS(status)}): "
                         f"{_last_line(log) or 'no message'}")


def _last_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
