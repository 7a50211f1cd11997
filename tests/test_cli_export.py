"""spnas-export end to end: the README's main job, the report contract, and clean failures."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from checkpoints import write_bad_checkpoint

import spnas
from spnas.cli.export import main

EXPORT = [sys.executable, "-m", "spnas.cli.export"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """``spnas-export --format tflite --int8`` with nothing else: embedded images, auto weights."""
    out = tmp_path_factory.mktemp("default") / "exports"
    result = subprocess.run([*EXPORT, "--format", "tflite", "--int8", "--out", str(out), "--android-assets",
                             str(out.parent / "assets")], capture_output=True, text=True, timeout=600)
    return result, out


def test_android_assets_are_staged_and_moved_in_whole(default_run):
    _, out = default_run
    from spnas.android import ASSET_FILES

    assets = out.parent / "assets"
    assert sorted(str(p.relative_to(assets)) for p in assets.rglob("*") if p.is_file()) == sorted(ASSET_FILES)
    assert sorted(p.name for p in assets.iterdir()) == ["golden", "labels.txt", "model.tflite", "preprocessing.json"]


def test_default_export_works_offline(default_run):
    result, out = default_run
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["weights"]["source"] == "random"
    assert "NOT FOR DEPLOYMENT" in report["weights"]["warning"]
    assert "embedded image set" in result.stderr and "NOT FOR DEPLOYMENT" in result.stderr
    precisions = {a["precision"]: a for a in report["artifacts"]}
    assert set(precisions) == {"fp32", "int8"}
    assert precisions["int8"]["gate"]["status"] == "not applicable (random weights)"
    assert precisions["int8"]["passed"] is None
    assert precisions["fp32"]["passed"] is True
    assert all(a["app"] is None and a["mediapipe"] is None for a in report["artifacts"])  # asked only with --app
    assert "artifact" in result.stdout and "spnasnet_100_int8.tflite" in result.stdout


def test_report_contract(default_run):
    _, out = default_run
    report = json.loads((out / "report.json").read_text())
    assert {"spnas_version", "weights", "preprocessing", "calibration", "artifacts"} <= set(report)
    assert set(report["weights"]) == {"source", "sha256", "warning"}
    assert report["preprocessing"]["resize_size"] == 256
    calibration = report["calibration"]
    assert calibration["n_images"] == len(calibration["manifest"]) > 0
    parity_files = {m["file"] for m in report["parity_images"]["manifest"]}
    assert not parity_files & {m["file"] for m in calibration["manifest"]}
    for artifact in report["artifacts"]:
        assert {"format", "precision", "path", "size_bytes", "parity", "passed"} <= set(artifact)
        assert set(artifact["parity"]) >= {"n_images", "max_abs_error", "cosine", "sqnr_db", "top1_agreement",
                                           "top5_agreement"}
        assert not artifact["path"].startswith("/") and (out / artifact["path"]).stat().st_size == \
            artifact["size_bytes"]
    assert sorted(p.name for p in out.iterdir()) == ["quant_plan.json", "report.json", "spnasnet_100_fp32.tflite",
                                                       "spnasnet_100_int8.tflite"]


def test_strict_refuses_random_weights(tmp_path, capsys):
    assert main(["--format", "tflite", "--weights", "random", "--strict", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: --strict: refusing random weights"


def test_quiet_prints_nothing_on_stderr(cli_exports):
    """The session's ``--format all --int8 --quiet`` run: coremltools' progress bars, TF's and XNNPACK's log lines
    and our own progress are all silenced on a successful run."""
    assert (cli_exports.parent / "stderr.txt").read_text() == ""
    assert "spnasnet_100_int8.mlpackage" in (cli_exports.parent / "stdout.txt").read_text()


def test_help_is_instant():
    start = time.perf_counter()
    result = subprocess.run([*EXPORT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--format" in result.stdout and "--int8" in result.stdout
    assert time.perf_counter() - start < 5  # generous: it imports no backend (well under 1 s locally)
    probe = ("import sys, spnas.cli.export; "
             "print(sorted(m for m in ('torch', 'tensorflow', 'onnx', 'coremltools') if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert heavy.stdout.strip() == "[]"


def assert_clean_failure(result: subprocess.CompletedProcess, out, expect: str, code: int = 2, usage: bool = False):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    # progress and warnings are "spnas: ..." lines; the failure is one "error:" line, and nothing else is printed
    # (a usage error is argparse's: the usage synopsis, then one "spnas-export: error:" line)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("spnas: ")
             and not (usage and line.startswith(("usage: ", " ")))]
    error = "spnas-export: error: " if usage else "error: "
    assert len(lines) == 1 and lines[0].startswith(error) and expect in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir()), "a failed run left files behind"


# every BAD_CHECKPOINTS case is refused in test_weights; here two end to end: one line, exit 2, nothing written
@pytest.mark.parametrize("case", ["truncated", "code"])
def test_bad_checkpoint(tmp_path, case, imagenet_dir):
    weights = write_bad_checkpoint(tmp_path, case, spnas.create_model("random").state_dict())
    out = tmp_path / "out"
    result = subprocess.run([*EXPORT, "--format", "onnx", "--weights", str(weights), "--calib", str(imagenet_dir),
                             "--num-calib", "4", "--num-parity", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert_clean_failure(result, out, weights.name)


@pytest.mark.parametrize("case", ["empty", "missing", "all-corrupt"])
def test_bad_calibration_folder(tmp_path, case):
    folder = tmp_path / "calib"
    if case != "missing":
        folder.mkdir()
    if case == "all-corrupt":
        for i in range(4):
            (folder / f"img{i}.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    out = tmp_path / "out"
    result = subprocess.run([*EXPORT, "--format", "onnx", "--calib", str(folder), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert_clean_failure(result, out, str(folder))


@pytest.mark.parametrize("argv, expect", [
    (["--format", "pdf"], "invalid choice: 'pdf'"),
    (["--format", "onnx", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--int8"], "the following arguments are required: --format"),
    (["--format", "onnx", "--app", "mediapipe"], "--app needs --format tflite or all"),  # the request's own check
    (["--format", "tflite", "--fallback", "auto"], "--fallback auto needs --int8"),
])
def test_usage_errors(tmp_path, argv, expect):
    result = subprocess.run([*EXPORT, *argv, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=60)
    assert_clean_failure(result, tmp_path / "out", expect, usage=True)


def test_output_path_that_is_a_file(tmp_path):
    out = tmp_path / "exports"
    out.write_text("I am a file")
    result = subprocess.run([*EXPORT, "--format", "onnx", "--out", str(out)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "exists and is not a directory" in result.stderr
    assert out.read_text() == "I am a file"


def test_a_plan_that_is_not_one_fails_before_any_work(tmp_path):
    plan = tmp_path / "quant_plan.json"
    plan.write_text('{"schema": "something else"}')
    out = tmp_path / "out"
    result = subprocess.run([*EXPORT, "--format", "onnx", "--int8", "--plan", str(plan), "--weights", "random",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert_clean_failure(result, out, f"--plan {plan}: not a quant plan")
    assert "loading weights" not in result.stderr  # refused before the weights or images were read
