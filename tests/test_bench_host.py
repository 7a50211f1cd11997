"""spnas-bench on the host: real artifacts in LiteRT / ONNX Runtime and the PyTorch reference, JSON, table, chart."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from spnas.bench import add_ratios, summarize
from spnas.bench.host import round_sizes
from spnas.cli.bench import main

BENCH = [sys.executable, "-m", "spnas.cli.bench"]


@pytest.fixture(scope="module")
def artifacts(cli_exports):
    """The float .tflite and .onnx of the session's CLI export of the fixture weights."""
    return [cli_exports / "spnasnet_100_fp32.tflite", cli_exports / "spnasnet_100_fp32.onnx"]


@pytest.fixture(scope="module")
def host_run(artifacts, tmp_path_factory):
    """One real run: every artifact plus the PyTorch reference, 1 and 2 threads, JSON and PNG."""
    out = tmp_path_factory.mktemp("bench_run")
    command = [*BENCH, *map(str, artifacts), "pytorch", "--threads", "1,2", "--warmup", "2", "--runs", "6",
               "--rounds", "3", "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result, json.loads((out / "bench.json").read_text()), out / "bench.png"


def test_json_has_every_artifact_and_thread_count(host_run, artifacts):
    _, document, _ = host_run
    assert document["mode"] == "host"
    names = [path.name for path in artifacts] + ["pytorch"]
    assert [(r["artifact"], r["threads"]) for r in document["results"]] == [(n, t) for t in (1, 2) for n in names]
    runtimes = {r["format"]: r["runtime"] for r in document["results"]}
    assert runtimes["tflite"] == "LiteRT (XNNPACK)" and runtimes["pytorch"] == "PyTorch eager"
    assert document["runtimes"]["ai-edge-litert"] and document["runtimes"]["torch"]
    assert document["settings"]["rounds"] == 3 and "ru_maxrss" in document["settings"]["peak_rss_method"]
    assert document["machine"]["cpu_count"] >= 1


def test_statistics_are_consistent(host_run, artifacts):
    _, document, _ = host_run
    sizes = {path.name: path.stat().st_size for path in artifacts}
    for record in document["results"]:
        latency = record["latency_ms"]
        assert latency["n_runs"] == 6 and record["warmup_runs"] == 2
        assert 0 < latency["min"] <= latency["median"] <= latency["p90"] <= latency["max"]
        assert latency["std"] >= 0 and latency["min"] <= latency["mean"] <= latency["max"]
        assert record["peak_rss_mb"] > record["rss_delta_mb"] > 0  # whole worker process vs model + runtime part
        assert record["precision"] == "fp32"
        if record["artifact"] in sizes:
            assert record["size_bytes"] == sizes[record["artifact"]]
        else:
            assert record["size_bytes"] == pytest.approx(4 * 4.42e6, rel=0.05)  # fp32 state dict of SPNasNet-100
    for threads in (1, 2):
        records = [r for r in document["results"] if r["threads"] == threads]
        assert records[0]["ratio_vs_first"] == 1.0
        for record in records[1:]:
            assert record["ratio_vs_first"] == pytest.approx(
                record["latency_ms"]["median"] / records[0]["latency_ms"]["median"])


def test_runs_are_interleaved_with_progress_on_stderr(host_run, artifacts):
    result, _, _ = host_run
    rounds = [line for line in result.stderr.splitlines() if "round " in line]
    assert len(rounds) == 6  # 3 rounds x 2 thread counts, each reporting every artifact
    assert all(all(path.name in line for path in artifacts) and "pytorch" in line for line in rounds)
    assert "round 3/3" in rounds[-1] and "[2 thread(s)]" in rounds[-1]
    assert "median ms" in result.stdout and "vs first" in result.stdout and "spnas:" not in result.stdout


def test_chart_is_a_png(host_run):
    _, _, png = host_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_corrupt_artifact_fails_in_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"this is not a flatbuffer")
    assert main([str(bad), "--runs", "1", "--warmup", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{bad}: not a loadable TFLite model" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("name", "message"), [
    ("missing.tflite", "missing.tflite: no such artifact"),
    ("notes.txt", "unknown artifact type '.txt'"),
])
def test_bad_artifacts(tmp_path, name, message, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main([str(tmp_path / name)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give at least one ARTIFACT"),
    (["pytorch", "--threads", "0"], "positive integers"),
    (["pytorch", "--runs", "0"], "--runs and --rounds >= 1"),
    (["pytorch", "--lut", "x.json"], "--lut goes with --target pixel1"),
])
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_help_is_instant_and_imports_no_runtime():
    start = time.perf_counter()
    result = subprocess.run([*BENCH, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--threads" in result.stdout and "--adb" in result.stdout
    assert time.perf_counter() - start < 5
    probe = ("import sys, spnas.cli.bench; print(sorted(m for m in ('torch', 'tensorflow', 'onnxruntime', "
             "'ai_edge_litert', 'matplotlib', 'numpy') if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert heavy.stdout.strip() == "[]"


def test_summary_statistics():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert stats == {"n_runs": 5, "mean": 4.0, "median": 3.0, "p90": pytest.approx(7.6), "min": 1.0, "max": 10.0,
                     "std": pytest.approx(float(np.std([4, 1, 3, 2, 10])))}
    assert round_sizes(50, 10) == [5] * 10 and round_sizes(7, 3) == [3, 2, 2] and round_sizes(2, 10) == [1, 1]


def test_ratios_are_per_thread_count():
    records = [{"threads": t, "latency_ms": {"median": m}} for t, m in ((1, 10.0), (1, 5.0), (2, 8.0), (2, 2.0))]
    add_ratios(records)
    assert [r["ratio_vs_first"] for r in records] == [1.0, 0.5, 1.0, 0.25]
