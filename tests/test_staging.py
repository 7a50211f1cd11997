"""All-or-nothing output: interrupted, concurrent, full-disk and read-only runs leave --out as it was."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spnas.errors import SpnasError
from spnas.io import atomic_write_text
from spnas.staging import STAGE_PREFIX, staged_output

EXPORT = [sys.executable, "-m", "spnas.cli.export"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too): files with their bytes, folders as None."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def previous_export(out: Path) -> Path:
    """What an earlier run left: an artifact, a package folder and the report describing them."""
    out.mkdir(parents=True)
    (out / "spnasnet_100_fp32.onnx").write_bytes(b"earlier onnx")
    (out / "spnasnet_100_fp16.mlpackage").mkdir()
    (out / "spnasnet_100_fp16.mlpackage" / "Manifest.json").write_text("{}")
    (out / "report.json").write_text(json.dumps({"artifacts": [{"path": "spnasnet_100_fp32.onnx"},
                                                               {"path": "spnasnet_100_fp16.mlpackage"}]}))
    return out


def one_error_line(result_stderr: str) -> str:
    """The one line besides "spnas: ..." progress (loading the weights comes before the lock on --out)."""
    lines = [line for line in result_stderr.splitlines() if not line.startswith("spnas: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result_stderr
    return lines[0]


def test_commit_replaces_files_and_packages_and_drops_the_stage(tmp_path):
    out = previous_export(tmp_path / "out")
    with staged_output(out) as stage:
        assert stage.parent == out and stage.name.startswith(STAGE_PREFIX)
        (stage / "spnasnet_100_fp16.mlpackage").mkdir()
        (stage / "spnasnet_100_fp16.mlpackage" / "weight.bin").write_bytes(b"new weights")
        (stage / "spnasnet_100_int8.onnx").write_bytes(b"new int8")
        (stage / "report.json").write_text("new report")
    assert snapshot(out) == {"report.json": b"new report", "spnasnet_100_fp16.mlpackage": None,
                             "spnasnet_100_fp16.mlpackage/weight.bin": b"new weights",
                             "spnasnet_100_fp32.onnx": b"earlier onnx", "spnasnet_100_int8.onnx": b"new int8"}


@pytest.mark.parametrize("existing", [True, False])
def test_a_failed_block_leaves_out_as_it_was(tmp_path, existing):
    out = previous_export(tmp_path / "out") if existing else tmp_path / "new" / "out"
    before = snapshot(out)
    with pytest.raises(SpnasError, match="boom"), staged_output(out) as stage:
        (stage / "spnasnet_100_fp32.onnx").write_bytes(b"half")
        (stage / "report.json").write_text("new")
        raise SpnasError("boom")
    assert snapshot(out) == before and out.exists() == existing


def test_a_stale_stage_of_a_killed_run_is_removed(tmp_path):
    out = previous_export(tmp_path / "out")
    before = snapshot(out)
    (out / f"{STAGE_PREFIX}killed").mkdir()
    (out / f"{STAGE_PREFIX}killed" / "spnasnet_100_fp32.onnx").write_bytes(b"half")
    with staged_output(out):
        pass
    assert snapshot(out) == before


@contextlib.contextmanager
def running_export(out: Path, weights: Path, images: Path, **popen):
    """A real ONNX int8 export in the background, killed on the way out if a failed assertion left it running."""
    process = subprocess.Popen([*EXPORT, "--format", "onnx", "--int8", "--weights", str(weights), "--calib",
                                str(images), "--num-calib", "32", "--num-parity", "2", "--out", str(out), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(pattern: str, out: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob(pattern)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no {pattern} in {out} after {timeout} s"
        time.sleep(0.05)


def test_ctrl_c_after_an_artifact_is_finished_and_a_second_run_meanwhile(tmp_path, fixture_weights, imagenet_dir):
    """The issue's case: Ctrl-C once the ONNX fp32 file is done; a second export into the same --out meanwhile."""
    out = previous_export(tmp_path / "out")
    before = snapshot(out)
    with running_export(out, fixture_weights, imagenet_dir) as first:
        wait_for(f"{STAGE_PREFIX}*", out, first)
        second = subprocess.run([*EXPORT, "--format", "onnx", "--weights", str(fixture_weights), "--out", str(out)],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert one_error_line(second.stderr) == (f"error: --out {out}: another export is writing here; wait for it "
                                                 "or choose another --out")
        wait_for(f"{STAGE_PREFIX}*/spnasnet_100_fp32.onnx", out, first)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 130
    assert one_error_line(stderr) == "error: interrupted (SIGINT); nothing partial was left behind"
    assert snapshot(out) == before


def test_sigterm_exits_143_and_leaves_no_new_folder(tmp_path, fixture_weights, imagenet_dir):
    out = tmp_path / "fresh" / "exports"
    with running_export(out, fixture_weights, imagenet_dir) as process:
        wait_for(f"{STAGE_PREFIX}*", out, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143
    assert one_error_line(stderr) == "error: terminated (SIGTERM); nothing partial was left behind"
    assert not out.exists() and list((tmp_path / "fresh").iterdir()) == []


def limit_file_size(max_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def mount_tmpfs(folder: Path, *options: str) -> str | None:
    """Mount a real 8 MB tmpfs at ``folder`` (needs root, as in CI); the reason when that is impossible."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return "no mount command"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=8m", *options]), "tmpfs", str(folder)],
                             capture_output=True, text=True)
    return None if mounted.returncode == 0 else f"cannot mount a tmpfs ({mounted.stderr.strip() or 'not root'})"


@contextlib.contextmanager
def tmpfs(folder: Path, *options: str):
    reason = mount_tmpfs(folder, *options)
    if reason:
        pytest.skip(reason)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_full_disk_mid_export(tmp_path, fixture_weights, imagenet_dir):
    """The 17.6 MB fp32 write fails on an 8 MB tmpfs (ENOSPC); where no tmpfs can be mounted, RLIMIT_FSIZE
    makes the same write fail with EFBIG, as a full disk would."""
    disk = tmp_path / "small"
    unmountable = mount_tmpfs(disk)
    try:
        out = previous_export(disk / "out")
        before = snapshot(out)
        limit = {"preexec_fn": limit_file_size(2 << 20)} if unmountable else {}
        with running_export(out, fixture_weights, imagenet_dir, **limit) as process:
            _, stderr = process.communicate(timeout=600)
        why = "File too large (EFBIG)" if unmountable else "No space left on device (ENOSPC)"
        assert process.returncode == 2
        assert one_error_line(stderr) == f"error: cannot write {out}/spnasnet_100_fp32.onnx: {why}; nothing was " \
                                         "left behind"
        assert snapshot(out) == before
    finally:
        if not unmountable:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def test_read_only_output(tmp_path, fixture_weights):
    with tmpfs(tmp_path / "ro", "ro") as disk:
        for out in (disk, disk / "new"):
            result = subprocess.run([*EXPORT, "--format", "onnx", "--weights", str(fixture_weights), "--out",
                                     str(out)], capture_output=True, text=True, timeout=300)
            assert result.returncode == 2
            assert one_error_line(result.stderr) == f"error: --out {out}: {disk} is not a writable directory"
        with pytest.raises(SpnasError) as error:  # --json / --markdown / --plot outputs of every CLI
            atomic_write_text(disk / "parity.json", "{}")
        assert str(error.value) == f"cannot write {disk}/parity.json: Read-only file system (EROFS); nothing was " \
                                   "left behind"
        assert list(disk.iterdir()) == []
