"""spnas-bench --adb against a fake adb that replays recorded benchmark_model output in every known format."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from fake_adb import install_fake_adb, logged_calls

from spnas.bench.adb import BenchmarkOutputError, benchmark_command, parse_benchmark_output, strip_prefixes
from spnas.cli.bench import main

FIXTURES = Path(__file__).parent / "data" / "adb"

# fixture -> (output format, n_runs, mean ms, median ms, min ms, init ms, a memory key and value)
EXPECTED = {
    "legacy_no_stats.txt": ("tflite-legacy-no-stats", 50, 80.7745, None, 79.688, 6.214, None),
    "legacy_average_inference.txt": ("tflite-legacy", 50, 62.2336, None, 61.377, 38.467,
                                     ("overall_max_rss_delta_mb", 36.7852)),
    "android_app_logcat.txt": ("tflite-legacy", 50, 80.6601, None, 79.512, 4.108, ("max_rss_mb", 61.0586)),
    "current_no_prefix.txt": ("tflite-current", 50, 24.1882, None, 23.804, 21.402,
                              ("overall_max_rss_delta_mb", 14.8047)),
    "current_info_prefix.txt": ("tflite-current", 50, 41.2339, 41.065, 40.611, 18.733, ("peak_mb", 21.8711)),
    "litert_compiled_model.txt": ("litert-compiled-model", 50, 71.4523, 71.338, 70.954, 63.12,
                                  ("overall_footprint_delta_mb", 27.18)),
    "litert_compiled_model_block_only.txt": ("litert-compiled-model", 50, 71.45, None, 70.95, 63.12,
                                             ("peak_mb", 31.02)),
}


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_parse_every_known_format(fixture):
    output_format, n_runs, mean, median, minimum, init, memory = EXPECTED[fixture]
    parsed = parse_benchmark_output((FIXTURES / fixture).read_text())
    assert parsed["output_format"] == output_format
    latency = parsed["latency_ms"]
    assert latency["n_runs"] == n_runs
    assert latency["mean"] == pytest.approx(mean)
    assert latency["median"] == (pytest.approx(median) if median else None)
    assert latency["min"] == pytest.approx(minimum) and latency["min"] <= latency["mean"] <= latency["max"]
    assert latency["p90"] is None  # benchmark_model never prints it; never invented
    assert parsed["init_ms"] == pytest.approx(init)
    assert parsed["warmup_runs"] == 10 and parsed["warmup_avg_ms"] > latency["mean"]
    if memory:
        assert parsed["memory_mb"][memory[0]] == pytest.approx(memory[1])


def test_constant_and_single_runs_are_understood():
    text = ("INFO: count=1 curr=637079\n\nINFO: count=20 curr=41000(all same)\n\n"
            "INFO: Inference timings in us: Init: 66002, First inference: 637079, Warmup (avg): 637079, "
            "Inference (avg): 41000\n")
    parsed = parse_benchmark_output(text)
    assert parsed["latency_ms"] == {"n_runs": 20, "mean": 41.0, "median": 41.0, "p90": None, "min": 41.0,
                                    "max": 41.0, "std": 0.0}
    assert parsed["first_inference_ms"] == pytest.approx(637.079) and parsed["warmup_runs"] == 1


def test_prefixes_are_stripped_in_any_combination():
    assert strip_prefixes("11-24 10:15:36.070  4567  4590 E tflite  : INFO: [benchmark_litert_model.h:66] "
                          "Inference (avg): 71.45 ms (50 runs)") == "Inference (avg): 71.45 ms (50 runs)"
    assert strip_prefixes("VERBOSE: Replacing 66 out of 66 node(s)") == "Replacing 66 out of 66 node(s)"


@pytest.mark.parametrize(("fixture", "quoted"), [
    ("malformed_truncated.txt", "'INFO: count=50 first=41217 cu'"),
    ("malformed_summary.txt", "'INFO: Inference timings in us: Init: 18733, First inference: 52871, "
                              "Warmup (avg): n/a, Inference (avg): n/a'"),
    ("error_missing_model.txt", "'ERROR: Failed to mmap model /data/local/tmp/spnasnet_100_int8.tflite'"),
])
def test_unparseable_output_quotes_the_line(fixture, quoted):
    with pytest.raises(BenchmarkOutputError) as error:
        parse_benchmark_output((FIXTURES / fixture).read_text())
    assert quoted in str(error.value) and "\n" not in str(error.value)


def test_command_quotes_device_paths():
    command = benchmark_command("/data/local/tmp/benchmark model", "/data/local/tmp/it's.tflite", 2, 3, 7, "f0",
                                True, ["--enable_op_profiling=true"])
    assert shlex.split(command) == ["taskset", "f0", "/data/local/tmp/benchmark model",
                                    "--graph=/data/local/tmp/it's.tflite", "--num_threads=2", "--use_xnnpack=true",
                                    "--warmup_runs=3", "--warmup_min_secs=0", "--num_runs=7", "--min_secs=0",
                                    "--enable_op_profiling=true", "2>&1"]


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """A fake ``adb`` first on PATH, a dummy benchmark binary and two dummy .tflite files."""
    install_fake_adb(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb_log.jsonl"))
    monkeypatch.delenv("FAKE_ADB_EXIT", raising=False)
    monkeypatch.delenv("FAKE_ADB_STATE", raising=False)
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    models = []
    for name in ("spnasnet_100_fp32.tflite", "spnasnet_100_int8.tflite"):
        models.append(tmp_path / name)
        models[-1].write_bytes(b"TFL3 fake model")

    def run(fixture: str, *extra: str, exit_code: int = 0, artifacts=None) -> tuple[int, dict | None]:
        monkeypatch.setenv("FAKE_ADB_OUTPUT", str(FIXTURES / fixture))
        monkeypatch.setenv("FAKE_ADB_EXIT", str(exit_code))
        out = tmp_path / "result.json"
        out.unlink(missing_ok=True)
        code = main(["--adb", "--benchmark-binary", str(binary), "--json", str(out), "--quiet", *extra,
                     *[str(a) for a in (artifacts or models)]])
        return code, json.loads(out.read_text()) if out.exists() else None

    run.log = tmp_path / "adb_log.jsonl"
    run.models = models
    return run


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_end_to_end_every_format(fake_adb, fixture, capsys):
    code, document = fake_adb(fixture, "--serial", "FA6A10301234", "--threads", "1,2")
    assert code == 0, capsys.readouterr().err
    assert document["mode"] == "adb"
    assert document["device"]["model"] == "Pixel" and document["device"]["board_platform"] == "msm8996"
    assert document["device"]["abi"] == "arm64-v8a" and document["device"]["android_release"] == "10"
    assert document["device"]["soc_model"] is None  # ro.soc.model is Android 12+
    assert document["device"]["cpu_max_freq_mhz"] == {"cpu0": 1593.6, "cpu1": 1593.6, "cpu2": 2150.4,
                                                      "cpu3": 2150.4}
    records = document["results"]
    assert [(r["artifact"], r["threads"]) for r in records] == [
        ("spnasnet_100_fp32.tflite", 1), ("spnasnet_100_int8.tflite", 1),
        ("spnasnet_100_fp32.tflite", 2), ("spnasnet_100_int8.tflite", 2)]
    assert [r["precision"] for r in records[:2]] == ["fp32", "int8"]
    expected = EXPECTED[fixture]
    for record in records:  # the host record's keys, filled from the device output
        assert {"artifact", "format", "precision", "threads", "runtime", "size_bytes", "latency_ms", "peak_rss_mb",
                "ratio_vs_first"} <= set(record)
        assert record["output_format"] == expected[0]
        assert record["latency_ms"]["mean"] == pytest.approx(expected[2])
        assert record["ratio_vs_first"] == pytest.approx(1.0)  # the fake answers every run alike
    assert "spnasnet_100_fp32.tflite" in capsys.readouterr().out


def test_commands_sent_to_the_device(fake_adb):
    code, _ = fake_adb("current_info_prefix.txt", "--serial", "emulator-5554", "--threads", "2", "--warmup", "3",
                       "--runs", "7", "--taskset", "f0")
    assert code == 0
    calls = logged_calls(fake_adb.log)
    assert {call["serial"] for call in calls} == {"emulator-5554"}
    pushes = [call["args"] for call in calls if call["args"][0] == "push"]
    assert [p[2] for p in pushes] == ["/data/local/tmp/android_aarch64_benchmark_model",
                                      "/data/local/tmp/spnasnet_100_fp32.tflite",
                                      "/data/local/tmp/spnasnet_100_int8.tflite"]
    assert [Path(p[1]).name for p in pushes] == ["android_aarch64_benchmark_model", "spnasnet_100_fp32.tflite",
                                                 "spnasnet_100_int8.tflite"]
    shells = [call["args"][1] for call in calls if call["args"][0] == "shell"]
    assert len([c for c in shells if "getprop" in c]) == 1 and "getprop $p" in shells[0]  # one round trip for facts
    assert "ro.product.model ro.product.manufacturer ro.board.platform" in shells[0]
    assert "chmod 755 /data/local/tmp/android_aarch64_benchmark_model" in shells
    runs = [shlex.split(command) for command in shells if "--graph=" in command]
    assert runs == [["taskset", "f0", "/data/local/tmp/android_aarch64_benchmark_model",
                     f"--graph=/data/local/tmp/{name}", "--num_threads=2", "--use_xnnpack=true", "--warmup_runs=3",
                     "--warmup_min_secs=0", "--num_runs=7", "--min_secs=0", "2>&1"]
                    for name in ("spnasnet_100_fp32.tflite", "spnasnet_100_int8.tflite")]
    assert calls[0]["args"] == ["get-state"]


def test_awkward_names_are_quoted_for_the_device_shell(fake_adb, tmp_path):
    odd = tmp_path / "my model's int8.tflite"
    odd.write_bytes(b"TFL3")
    code, document = fake_adb("current_info_prefix.txt", "--no-xnnpack", artifacts=[odd])
    assert code == 0  # the fake splits the command like the device shell and finds the pushed file
    command = next(c["args"][1] for c in logged_calls(fake_adb.log) if "--graph=" in c["args"][-1])
    assert shlex.quote("--graph=/data/local/tmp/my model's int8.tflite") in command
    assert "--use_xnnpack=false" in command
    assert document["results"][0]["precision"] == "unknown"
    assert all(c["serial"] is None for c in logged_calls(fake_adb.log))  # no --serial: adb picks the device


@pytest.mark.parametrize(("fixture", "exit_code", "message"), [
    ("malformed_truncated.txt", 0, "cannot parse benchmark_model output line 'INFO: count=50 first=41217 cu'"),
    ("malformed_summary.txt", 0, "Warmup (avg): n/a, Inference (avg): n/a' (no inference time in it)"),
    ("error_missing_model.txt", 1, "benchmark_model failed on spnasnet_100_fp32.tflite (exit code 1): "
                                   "'ERROR: Failed to mmap model"),
    ("error_missing_model.txt", 0, "benchmark_model printed no result; last line: 'ERROR: Failed to mmap"),
])
def test_bad_output_is_one_clear_line(fake_adb, capsys, fixture, exit_code, message):
    code, document = fake_adb(fixture, exit_code=exit_code)
    err = capsys.readouterr().err
    assert code == 2 and document is None
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_device_problems(fake_adb, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FAKE_ADB_STATE", "no devices/emulators found")
    assert fake_adb("current_info_prefix.txt")[0] == 2
    assert "adb cannot reach a device: error: no devices/emulators found" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert fake_adb("current_info_prefix.txt")[0] == 2
    assert "adb not found on PATH" in capsys.readouterr().err


def test_usage_errors(fake_adb, tmp_path, capsys):
    onnx = tmp_path / "spnasnet_100_fp32.onnx"
    onnx.write_bytes(b"onnx")
    assert fake_adb("current_info_prefix.txt", artifacts=[onnx])[0] == 2
    assert "--adb runs .tflite files only" in capsys.readouterr().err
    assert fake_adb("current_info_prefix.txt", "--taskset", "f0;reboot")[0] == 2
    assert "expected a hexadecimal CPU mask" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--adb", str(fake_adb.models[0])])
    assert "--adb needs --benchmark-binary" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--taskset", "f0", str(fake_adb.models[0])])
    assert "--taskset goes with --adb" in capsys.readouterr().err
    assert logged_calls(fake_adb.log) == []  # nothing reached the device


def phones(monkeypatch, **configs) -> None:
    """Several fake phones by serial: a model name, a recorded benchmark_model output, or an adb state."""
    for config in configs.values():
        config.setdefault("state", "device")
        if "output" in config:
            config["output"] = str(FIXTURES / config["output"])
    monkeypatch.setenv("FAKE_ADB_DEVICES", json.dumps(configs))


def test_all_phones_in_parallel_with_one_failing(fake_adb, monkeypatch, tmp_path, capsys):
    phones(monkeypatch, A1={"model": "Pixel 8", "output": "current_info_prefix.txt"},
           B2={"model": "Pixel 7", "output": "litert_compiled_model.txt"},
           C3={"model": "Pixel 6", "output": "error_missing_model.txt", "exit": 1}, D4={"state": "unauthorized"})
    model = fake_adb.models[1]
    code, document = fake_adb("current_info_prefix.txt", "--adb-serial", "all", artifacts=[model])
    captured = capsys.readouterr()
    assert code == 2 and document["mode"] == "adb"  # the phones that finished are still written
    assert document["settings"]["serials"] == ["A1", "B2", "C3"]  # all: the phones listed in state 'device'
    rows = [(r["device_name"], r["artifact"], r["status"]) for r in document["results"]]
    assert rows == [("Google Pixel 8 (A1)", model.name, "ok"), ("Google Pixel 7 (B2)", model.name, "ok"),
                    ("C3", model.name, "failed")]
    a1, b2, c3 = document["results"]
    assert a1["output_format"] == "tflite-current" and b2["output_format"] == "litert-compiled-model"
    assert a1["device"]["model"] == "Pixel 8" and [d["serial"] for d in document["devices"]] == ["A1", "B2"]
    assert a1["ratio_vs_first"] == b2["ratio_vs_first"] == 1.0  # each phone against itself
    assert c3["failure"].startswith("benchmark_model failed on spnasnet_100_int8.tflite (exit code 1)")
    assert c3["latency_ms"]["median"] is None and c3["ratio_vs_first"] is None
    calls = logged_calls(fake_adb.log)
    assert calls[0]["serial"] is None and calls[0]["args"] == ["devices"]
    times = {serial: [c["t"] for c in calls if c["serial"] == serial] for serial in ("A1", "B2")}
    assert min(times["B2"]) < max(times["A1"]) and min(times["A1"]) < max(times["B2"])  # interleaved: in parallel
    assert {c["args"][2] for c in calls if c["args"][0] == "push" and c["serial"] == "B2"} == {
        "/data/local/tmp/android_aarch64_benchmark_model", f"/data/local/tmp/{model.name}"}
    assert "FAILED" in captured.out and "Google Pixel 7 (B2)" in captured.out
    assert captured.err.strip().splitlines()[-1].startswith("error: 1 of 3 phone(s) failed (reported as failed): [C3]")
    from spnas.bench.imported import import_reports

    saved = tmp_path / "phones.json"
    saved.write_text(json.dumps(document))
    assert [r["device_name"] for r in import_reports([saved])["results"]] == [row[0] for row in rows]


def test_named_phones_that_cannot_be_used(fake_adb, monkeypatch, capsys):
    phones(monkeypatch, C3={"state": "unauthorized"}, D4={"state": "offline"})
    assert fake_adb("current_info_prefix.txt", "--adb-serial", "all")[0] == 2
    assert "adb lists no device in state 'device' (C3 (unauthorized), D4 (offline))" in capsys.readouterr().err
    assert fake_adb("current_info_prefix.txt", "--adb-serial", "D4,C3,D4") == (2, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == ("error: every phone failed: [D4] adb cannot reach device D4: adb: device "
                                        "offline (check `adb devices`, or pass --serial); [C3] adb cannot reach device "
                                        "C3: adb: device unauthorized. (check `adb devices`, or pass --serial)")
    assert fake_adb("current_info_prefix.txt", "--adb-serial", "Z9")[0] == 2
    assert "[Z9] adb cannot reach device Z9: adb: device 'Z9' not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--adb-serial", "A1", "--serial", "A1", "--benchmark-binary", "x", "m.tflite"])
    assert "not both" in capsys.readouterr().err
