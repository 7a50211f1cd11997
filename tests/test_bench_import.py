"""spnas-bench --import: a host run, an AI Hub fleet and the Android app's report in one table, JSON and chart.

tests/data/bench/host.json is a real host run (see tests/data/bench/README.md);
tests/data/android_app/spnas-bench-android.json is BenchmarkReport.kt's output (README there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_aihub import FLEET, install_fake_client

from spnas.bench.chart import chart_layout
from spnas.cli.bench import main

DATA = Path(__file__).parent / "data"
HOST = DATA / "bench" / "host.json"
APP = DATA / "android_app" / "spnas-bench-android.json"


def test_app_report_is_read_with_the_kotlin_schema(tmp_path, capsys):
    out = tmp_path / "app.json"
    assert main(["--import", str(APP), "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["mode"] == "import" and document["sources"] == [
        {"file": str(APP), "mode": "android-app", "spnas_version": "android-demo 0.1.0", "results": 3}]
    records = document["results"]
    assert [(r["device_name"], r["threads"], r["accelerator"]) for r in records] == [
        ("Google Pixel 6 (app)", t, "cpu") for t in (1, 2, 4)]
    assert records[0]["latency_ms"]["median"] == pytest.approx(19.46) and records[0]["preprocess_ms"]["n_runs"] == 5
    assert records[0]["device"]["soc_model"] == "GS101" and records[0]["source"]["mode"] == "android-app"
    assert [r["ratio_vs_first"] for r in records] == [1.0, 1.0, 1.0]  # one record per thread count
    assert "Google Pixel 6 (app)" in capsys.readouterr().out


def test_host_fleet_and_phone_in_one_report(tmp_path, monkeypatch, capsys):
    """The AI Hub fleet comes from the fake client (one device failing), then all three files are imported."""
    install_fake_client(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_QAI_HUB_FAIL", json.dumps({"Google Pixel 8": "Device lost"}))
    model = tmp_path / "spnasnet_100_int8.tflite"
    model.write_bytes(b"\0\0\0\0TFL3" + bytes(500_000))
    fleet = tmp_path / "fleet.json"
    assert main(["--ai-hub", FLEET, "--json", str(fleet), "--quiet", str(model)]) == 2  # the partial fleet
    capsys.readouterr()
    combined, png = tmp_path / "all.json", tmp_path / "all.png"
    assert main(["--import", str(HOST), str(fleet), str(APP), "--json", str(combined), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    document = json.loads(combined.read_text())
    assert [s["mode"] for s in document["sources"]] == ["host", "ai-hub", "android-app"]
    records = document["results"]
    host_name = f"host {json.loads(HOST.read_text())['machine']['cpu_model']}"
    assert [(r["device_name"], r["artifact"], r["threads"], r["status"]) for r in records] == [
        (host_name, "spnasnet_100_fp32.tflite", 1, "ok"), (host_name, "spnasnet_100_int8.tflite", 1, "ok"),
        (host_name, "spnasnet_100_fp32.tflite", 2, "ok"), (host_name, "spnasnet_100_int8.tflite", 2, "ok"),
        ("Samsung Galaxy S24", "spnasnet_100_int8.tflite", None, "ok"),
        ("Google Pixel 8", "spnasnet_100_int8.tflite", None, "failed"),
        *[("Google Pixel 6 (app)", "spnasnet_100_int8.tflite", t, "ok") for t in (1, 2, 4)]]
    assert records[1]["ratio_vs_first"] == pytest.approx(
        records[1]["latency_ms"]["median"] / records[0]["latency_ms"]["median"])  # per device and thread count
    assert records[5]["ratio_vs_first"] is None and "Device lost" in records[5]["failure"]
    layout = chart_layout(records)
    assert layout.groups == ["tflite fp32", "tflite int8"]
    assert layout.series == ["host AMD EPYC · 1 thread", "host AMD EPYC · 2 threads", "Samsung Galaxy S24 · cpu",
                             "Google Pixel 8 · cpu", "Google Pixel 6 (app) · 1 thread · cpu",
                             "Google Pixel 6 (app) · 2 threads · cpu", "Google Pixel 6 (app) · 4 threads · cpu"]
    assert layout.failed[3] == [False, True]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FAILED" in printed and "Google Pixel 6 (app)" in printed
    again = tmp_path / "again.json"  # an import's own JSON imports again unchanged
    assert main(["--import", str(combined), "--json", str(again), "--quiet"]) == 0
    assert [r["device_name"] for r in json.loads(again.read_text())["results"]] == [r["device_name"] for r in records]


def app_report(**changes) -> str:
    document = json.loads(APP.read_text())
    for path, value in changes.items():
        target = document
        *parents, last = path.split("__")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return json.dumps(document)


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read it"),
    ('{"mode": "host", "results": [', "not a JSON report (Expecting value at line 1 column 30)"),
    (b"\x89PNG\r\n\x1a\n\xff", "not a JSON report (not UTF-8 text)"),
    ("[1, 2]", 'not a spnas-bench or Android demo report (no "mode")'),
    ('{"mode": "robo", "results": []}', "unknown report mode 'robo'"),
    ('{"mode": "pixel1", "total_ms": 80.4}', "a --target pixel1 prediction, not a measurement"),
    ('{"mode": "host", "results": []}', '"results" is missing or empty'),
    (app_report(device=KeyError), '"device" is missing'),
    (app_report(results__0__accelerator=KeyError), "results[0] has no 'accelerator'"),
    (app_report(results__1__latency_ms__median="fast"), "results[1].latency_ms.median is 'fast', not a number"),
    (app_report(results__2__threads=0), "results[2].threads is 0, not a thread count"),
    (app_report(results__0__preprocess_ms=[1]), "results[0].preprocess_ms is not an object"),
])
def test_bad_files_are_one_line_and_write_nothing(tmp_path, capsys, content, message):
    bad = tmp_path / "report.json"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content)
    out = tmp_path / "out.json"
    assert main(["--import", str(APP), str(bad), "--json", str(out), "--plot", str(tmp_path / "out.png")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: --import {bad}: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""
    assert not out.exists() and not (tmp_path / "out.png").exists()


def test_import_takes_no_measurement_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--import", str(APP), "--adb", "--benchmark-binary", "x"])
    assert "--import reads finished reports; it takes no --adb" in capsys.readouterr().err
