"""Artifacts and reports that are not what they claim: one line, exit 2, nothing written (spnas.artifact_intake)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VERIFY = [sys.executable, "-m", "spnas.cli.verify", "--quiet"]


def tiny_onnx(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """A valid ONNX model that is not SPNasNet: a 32x32 global average pool."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def flipped(data: bytes, start: int, count: int) -> bytes:
    buffer = bytearray(data)
    for index in range(start, start + count):
        buffer[index] ^= 0xFF
    return bytes(buffer)


def make_bad(case: str, exports: Path, folder: Path) -> Path:
    """Write one bad artifact into ``folder`` (beside a copy of the export's report) and return its path."""
    tflite = (exports / "spnasnet_100_int8.tflite").read_bytes()
    if case == "truncated-tflite":
        (folder / "model.tflite").write_bytes(tflite[: len(tflite) // 3])
        return folder / "model.tflite"
    if case == "text-onnx":
        (folder / "model.onnx").write_text("this is not an ONNX model\n")
        return folder / "model.onnx"
    if case == "corrupt-pte":
        if importlib.util.find_spec("executorch") is None:
            pytest.skip("executorch extra not installed, so the export wrote no .pte")
        pte = (exports / "spnasnet_100_int8.pte").read_bytes()
        (folder / "model.pte").write_bytes(flipped(pte, 100, 60))
        return folder / "model.pte"
    if case == "mlpackage-without-weights":
        package = folder / "model.mlpackage"
        shutil.copytree(exports / "spnasnet_100_int8.mlpackage", package)
        for weights in package.rglob("*.bin"):
            weights.unlink()
        return package
    if case == "foreign-onnx":
        return tiny_onnx(folder / "model.onnx")
    if case == "incompatible-onnx":  # carries a real spnas artifact's metadata, but is another network
        import onnx

        metadata = {p.key: p.value for p in onnx.load(exports / "spnasnet_100_fp32.onnx").metadata_props}
        return tiny_onnx(folder / "model.onnx", metadata)
    raise AssertionError(case)


ARTIFACT_CASES = {
    "truncated-tflite": "not a loadable TFLite model",
    "text-onnx": "not a valid ONNX file",
    "corrupt-pte": "ExecuTorch cannot load it",
    "mlpackage-without-weights": "is missing",
    "foreign-onnx": "not written by spnas-export",
    "incompatible-onnx": "cannot be run",
}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_one_line_exit_2(result, expect: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.stderr


@pytest.mark.parametrize("case", sorted(ARTIFACT_CASES))
def test_bad_artifact_is_one_line(case, cli_exports, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    shutil.copy(cli_exports / "report.json", folder / "report.json")
    artifact = make_bad(case, cli_exports, folder)
    before = listing(folder)
    result = subprocess.run([*VERIFY, str(artifact), "--json", str(folder / "parity.json")], capture_output=True,
                            text=True, timeout=600)
    assert_one_line_exit_2(result, ARTIFACT_CASES[case])
    assert listing(folder) == before


def edit_report(report: dict, case: str) -> str:
    if case == "not-json":
        return json.dumps(report)[:200]
    if case == "future-version":
        return json.dumps({**report, "spnas_version": "9.0.0"})
    if case == "field-missing":
        return json.dumps({key: value for key, value in report.items() if key != "parity_images"})
    if case == "path-escapes":
        report["parity_images"]["manifest"][0]["file"] = "../../etc/passwd"
        return json.dumps(report)
    raise AssertionError(case)


REPORT_CASES = {"not-json": "not valid JSON", "future-version": "newer than this spnas",
                "field-missing": "no 'parity_images.source'", "path-escapes": "not a relative file"}


@pytest.mark.parametrize("case", sorted(REPORT_CASES))
def test_bad_report_beside_a_good_artifact_is_one_line(case, cli_exports, tmp_path):
    shutil.copy(cli_exports / "spnasnet_100_int8.tflite", tmp_path)
    report = json.loads((cli_exports / "report.json").read_text())
    (tmp_path / "report.json").write_text(edit_report(report, case))
    before = listing(tmp_path)
    result = subprocess.run([*VERIFY, str(tmp_path / "spnasnet_100_int8.tflite"), "--json",
                             str(tmp_path / "parity.json")], capture_output=True, text=True, timeout=600)
    assert_one_line_exit_2(result, REPORT_CASES[case])
    assert listing(tmp_path) == before


def test_a_native_crash_in_the_probe_is_one_error(monkeypatch, tmp_path):
    """A real SIGSEGV (a NULL read through ctypes) in the child, as a runtime faulting on a malformed model."""
    import ctypes

    import spnas.export
    from spnas.artifact_intake import probe
    from spnas.errors import SpnasError

    monkeypatch.setattr(spnas.export, "load_runner", lambda path: ctypes.string_at(0))
    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(b"\0" * 64)
    with pytest.raises(SpnasError, match=r"model.tflite: the runtime crashed \(SIGSEGV\)"):
        probe([artifact])

