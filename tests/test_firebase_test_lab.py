"""android_demo/firebase_test_lab.sh against fake gcloud/gsutil (tests/fake_gcloud.py): the Test Lab command it
sends, and the reports it brings back, which spnas-bench --import then reads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fake_gcloud import install_fake_cloud

from spnas.cli.bench import main

SCRIPT = Path(__file__).parents[1] / "android_demo" / "firebase_test_lab.sh"


def run_script(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    install_fake_cloud(tmp_path / "bin")
    for apk in ("app.apk", "test.apk"):
        (tmp_path / apk).write_bytes(b"PK\x03\x04")
    environment = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.jsonl"),
                   **(env or {})}
    apks = ["--app", str(tmp_path / "app.apk"), "--test", str(tmp_path / "test.apk")]
    return subprocess.run(["bash", str(SCRIPT), *apks, *args], capture_output=True, text=True, timeout=60,
                          env=environment, cwd=tmp_path)


def test_matrix_command_and_reports_pulled_back(tmp_path, capsys):
    result = run_script(tmp_path, "--bucket", "gs://spnas-results/", "--device", "model=oriole,version=33",
                        "--device", "model=husky,version=34", "--threads", "1,4", "--runs", "30",
                        env={"FAKE_GCLOUD_EXIT": "10", "FAKE_GCLOUD_NO_REPORT": "husky"})
    assert result.returncode == 10, result.stderr  # Test Lab's exit code, after copying what there is
    (argv,) = [json.loads(line) for line in (tmp_path / "gcloud.jsonl").read_text().splitlines()]
    assert argv[:6] == ["firebase", "test", "android", "run", "--type", "instrumentation"]
    flags = dict(zip(argv[6::2], argv[7::2], strict=False))
    assert flags["--app"] == str(tmp_path / "app.apk") and flags["--test"] == str(tmp_path / "test.apk")
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "--device"] == ["model=oriole,version=33",
                                                                                 "model=husky,version=34"]
    assert flags["--test-targets"] == "class org.spnas.demo.BenchmarkInstrumentedTest"
    assert flags["--environment-variables"] == "^:^threads=1,4:warmup=10:runs=30:backend=cpu"  # commas kept
    assert flags["--directories-to-pull"] == "/sdcard/Android/data/org.spnas.demo/files/spnas-bench"
    assert flags["--results-bucket"] == "spnas-results" and flags["--results-dir"].startswith("spnas-bench-")
    assert "--no-performance-metrics" in argv and "--no-record-video" in argv
    (report,) = sorted((tmp_path / "firebase-results").rglob("spnas-bench-android.json"))
    relative = report.relative_to(tmp_path)  # under --out (default firebase-results), from where it was run
    assert "oriole-33" in str(relative) and f"read them with: spnas-bench --import {relative}\n" in result.stdout
    assert main(["--import", str(report), "--quiet"]) == 0
    assert "Google Pixel 6 (app)" in capsys.readouterr().out


def test_bad_arguments_stop_before_any_cloud_call(tmp_path):
    for args, message in ((["--device", "model=oriole"], "--bucket BUCKET is required"),
                          (["--bucket", "b"], "give at least one --device"),
                          (["--bucket", "b", "--device", "model=oriole", "--threads", "1;reboot"], "--threads"),
                          (["--bucket", "b", "--device", "model=oriole", "--backend", "npu"], "--backend: cpu or gpu")):
        result = run_script(tmp_path, *args)
        assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "gcloud.jsonl").exists()
