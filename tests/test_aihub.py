"""spnas-bench --ai-hub against a fake qai_hub client built from qai-hub 0.56's source (tests/fake_qai_hub)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from spnas.bench import aihub
from spnas.cli.bench import main

FAKE = Path(__file__).parent / "fake_qai_hub"
FLEET = "Samsung Galaxy S24,Google Pixel 8"


def install_fake_client(monkeypatch, tmp_path, token: bool = True):
    """The fake client first on sys.path (freshly imported) and a `qai-hub configure`-style ini of our own."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.delitem(sys.modules, "qai_hub", raising=False)
    fake = importlib.import_module("qai_hub")
    assert Path(fake.__file__).is_relative_to(FAKE)
    ini = tmp_path / "client.ini"
    ini.write_text("[api]\napi_url = fake://api\nweb_url = fake://web\n" + ("api_token = t0k3n\n" if token else ""))
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    monkeypatch.setenv("FAKE_QAI_HUB_LOG", str(tmp_path / "hub_log.jsonl"))
    for switch in ("FAKE_QAI_HUB_OFFLINE", "FAKE_QAI_HUB_FAIL", "FAKE_QAI_HUB_STUCK", "FAKE_QAI_HUB_NOISE"):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setattr(aihub, "POLL_SECONDS", 0.0)
    return fake


def hub_log(tmp_path) -> list[dict]:
    path = tmp_path / "hub_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """Run spnas-bench --ai-hub on two dummy .tflite files (the fake never parses a profiled model)."""
    install_fake_client(monkeypatch, tmp_path)
    models = []
    for name, size in (("spnasnet_100_fp32.tflite", 1_760_000), ("spnasnet_100_int8.tflite", 500_000)):
        models.append(tmp_path / name)
        models[-1].write_bytes(b"\0\0\0\0TFL3" + bytes(size - 8))

    def run(*extra: str, artifacts=None) -> tuple[int, dict | None]:
        out = tmp_path / "fleet.json"
        out.unlink(missing_ok=True)
        code = main(["--json", str(out), "--quiet", *extra, *[str(a) for a in (artifacts or models)]])
        return code, json.loads(out.read_text()) if out.exists() else None

    run.models = models
    return run


def test_fleet_profile_is_normalised_and_concurrent(fleet, tmp_path, capsys):
    code, document = fleet("--ai-hub", FLEET, "--plot", str(tmp_path / "fleet.png"))
    out = capsys.readouterr().out
    assert code == 0
    assert document["mode"] == "ai-hub" and document["client"]["qai_hub"] == "0.56.0"
    assert [d["name"] for d in document["devices"]] == ["Samsung Galaxy S24", "Google Pixel 8"]
    assert document["devices"][0]["chipset"] == "qualcomm-snapdragon-8gen3" and document["devices"][0]["os"] == \
        "android" and document["devices"][0]["os_version"] == "14"
    assert document["settings"]["options"] == "--compute_unit cpu"
    records = document["results"]
    assert [(r["device_name"], r["artifact"]) for r in records] == [
        (device, model.name) for device in FLEET.split(",") for model in fleet.models]
    for record in records:
        assert {"artifact", "format", "precision", "threads", "runtime", "size_bytes", "latency_ms", "peak_rss_mb",
                "ratio_vs_first"} <= set(record)
        assert record["status"] == "ok" and record["compute_unit"] == "cpu" and record["format"] == "tflite"
        latency = record["latency_ms"]
        assert latency["n_runs"] == 100 and latency["min"] <= latency["median"] <= latency["p90"] <= latency["max"]
        assert record["peak_memory_mb"]["inference"][0] < record["peak_memory_mb"]["inference"][1] == \
            record["peak_rss_mb"]
        assert record["load_ms"]["first"] > record["load_ms"]["warm"] > 0
        assert record["compute_units"] == {"CPU": 7}
        assert set(record["layer_times_ms"]) == {"conv_stem", "blocks.0.0.conv_dw", "blocks.1.0.conv_pw", "blocks.1.1",
                                                 "conv_head", "classifier"}
    assert [r["precision"] for r in records] == ["fp32", "int8", "fp32", "int8"]
    assert records[0]["ratio_vs_first"] == records[2]["ratio_vs_first"] == 1.0  # per device
    assert records[1]["ratio_vs_first"] < 1.0  # the smaller file is faster on the fake's invented scale
    log = hub_log(tmp_path)
    submits = [i for i, e in enumerate(log) if e["event"] == "submit"]
    polls = [i for i, e in enumerate(log) if e["event"] == "get_status"]
    assert len(submits) == 4 and max(submits) < min(polls)  # every job in flight before any is polled
    assert {e["os"] for e in log if e["event"] == "submit"} == {"14"}  # the device pinned to what is reported
    assert sum(e["event"] == "upload_model" for e in log) == 2  # one upload per artifact, shared by devices
    assert "Samsung Galaxy S24" in out and "Google Pixel 8" in out and "OK" in out
    assert (tmp_path / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_record_from_the_clients_documented_shape(tmp_path):
    """execution_summary in microseconds and bytes, ranges as (lower, upper) tuples, per-layer details."""
    artifact = tmp_path / "spnasnet_100_int8.onnx"
    artifact.write_bytes(b"onnx")
    plan = aihub.Plan(artifact, type("Device", (), {"name": "X", "os": "14", "attributes": ["chipset:c1"]})())
    plan.job = type("Job", (), {"job_id": "j1", "url": "fake://jobs/j1/"})()
    profile = {"execution_summary": {
        "estimated_inference_time": 1500, "estimated_inference_peak_memory": 3 * 2**20, "first_load_time": 90000,
        "warm_load_time": 20000, "inference_memory_peak_range": (2 * 2**20, 3 * 2**20),
        "first_load_memory_peak_range": None, "all_inference_times": [1500, 1700, 1600, 4000]},
        "execution_detail": [
            {"name": "/blocks/blocks.2/blocks.2.1/conv_dw/Conv", "type": "Conv", "compute_unit": "CPU",
             "execution_time": 250},
            {"name": "/blocks/blocks.2/blocks.2.1/conv_dw/Relu", "type": "Relu", "compute_unit": "CPU",
             "execution_time": 50},
            {"name": "node_17", "type": "Gemm", "compute_unit": "GPU", "execution_time": 80},
            {"name": "Cast_3", "type": "Cast", "compute_unit": "CPU"}]}
    record = aihub.profile_record(plan, profile, "cpu")
    assert record["latency_ms"]["median"] == 1.65 and record["latency_ms"]["n_runs"] == 4
    assert record["latency_ms"]["max"] == 4.0 and record["estimated_inference_ms"] == 1.5
    assert record["peak_memory_mb"] == {"inference": [2.0, 3.0]} and record["peak_rss_mb"] == 3.0
    assert record["load_ms"] == {"first": 90.0, "warm": 20.0} and record["compute_units"] == {"CPU": 3, "GPU": 1}
    assert record["layer_times_ms"] == {"blocks.2.1.conv_dw": 0.3, "classifier": 0.08}
    assert record["layers"][3]["timm_layer"] is None and record["layers"][3]["time_ms"] is None
    assert record["precision"] == "int8" and record["format"] == "onnx" and record["device"]["chipset"] == "c1"
    old_profile = {"execution_summary": {"estimated_inference_time": 2000, "inference_memory_peak_range": None,
                                         "estimated_inference_peak_memory": None}, "execution_detail": []}
    assert aihub.profile_record(plan, old_profile, "cpu")["latency_ms"]["n_runs"] == 1  # pre-1.2 profiles
    with pytest.raises(aihub.SpnasError, match="returned no profile"):
        aihub.profile_record(plan, {}, "cpu")


@pytest.mark.parametrize(("name", "kind", "expected"), [
    ("blocks.3.1.conv_pwl/Conv2D;blocks.3.1.conv_pwl/BiasAdd", "CONV_2D", "blocks.3.1.conv_pwl"),
    ("blocks.5.2.add/add", "ADD", "blocks.5.2"),
    ("conv_stem/Relu;conv_stem/Conv2D", "CONV_2D", "conv_stem"),
    ("/blocks/blocks.1/blocks.1.0/conv_pw/Conv", "Conv", "blocks.1.0.conv_pw"),
    ("/conv_head/Conv", "Conv", "conv_head"),
    ("StatefulPartitionedCall:0", "FULLY_CONNECTED", "classifier"),
    ("tfl.quantize", "QUANTIZE", None),
    ("blocks.9.9.conv_pw/Conv2D", "CONV_2D", None),  # no such block
])
def test_layer_names_map_to_timm(name, kind, expected):
    assert aihub.timm_layer(name, kind, aihub.timm_layer_names()) == expected


def test_partial_fleet_reports_finished_devices(fleet, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_QAI_HUB_FAIL", json.dumps({"Google Pixel 8": "Failed to load the model on device"}))
    code, document = fleet("--ai-hub", FLEET)
    captured = capsys.readouterr()
    assert code == 2 and document is not None
    status = {(r["device_name"], r["artifact"]): r["status"] for r in document["results"]}
    assert list(status.values()) == ["ok", "ok", "failed", "failed"]
    failed = document["results"][2]
    assert "failed: Failed to load the model on device" in failed["failure"] and failed["latency_ms"]["median"] is None
    assert failed["ratio_vs_first"] is None and failed["job"]["url"].startswith("fake://jobs/")
    assert "FAILED" in captured.out and "OK" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 2 of 4 AI Hub job(s) failed") and "Traceback" not in captured.err


@pytest.mark.parametrize(("setup", "message"), [
    ("no-config", "Failed to load client configuration file."),
    ("no-token", "Your API token is missing."),
    ("offline", "Could not connect to Qualcomm AI Hub."),
    ("unknown-device", "AI Hub has no device named 'Nokia 3310'"),
    ("timeout", "still MEASURING_PERFORMANCE after 0.05 s (--ai-hub-timeout)"),
])
def test_failures_are_one_line(fleet, monkeypatch, tmp_path, capsys, setup, message):
    devices = FLEET
    extra = []
    if setup == "no-config":
        monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "absent.ini"))
    elif setup == "no-token":
        (tmp_path / "client.ini").write_text("[api]\napi_url = fake://api\nweb_url = fake://web\n")
    elif setup == "offline":
        monkeypatch.setenv("FAKE_QAI_HUB_OFFLINE", "1")
    elif setup == "unknown-device":
        devices = "Samsung Galaxy S24,Nokia 3310"
    else:
        monkeypatch.setenv("FAKE_QAI_HUB_STUCK", json.dumps(FLEET.split(",")))
        monkeypatch.setattr(aihub, "POLL_SECONDS", 0.01)
        extra = ["--ai-hub-timeout", "0.05"]
    code, document = fleet("--ai-hub", devices, *extra)
    err = capsys.readouterr().err
    assert code == 2 and document is None
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if setup != "timeout":
        assert not any(e["event"] == "submit" for e in hub_log(tmp_path))  # refused before any job


def test_options_compute_unit_and_device_file(fleet, tmp_path, capsys):
    devices = tmp_path / "devices.txt"
    devices.write_text("# the fleet\nSamsung Galaxy S23\n\nGoogle Pixel 8  # Tensor G3\n")
    code, document = fleet("--ai-hub-devices", str(devices), "--compute-unit", "npu", "--ai-hub-options",
                           "--max_profiler_iterations 50", artifacts=fleet.models[1:])
    assert code == 0
    submits = [e for e in hub_log(tmp_path) if e["event"] == "submit"]
    # the jobs are submitted at once from a thread pool, so the log's order is the threads'
    assert sorted((e["device"], e["os"]) for e in submits) == [("Google Pixel 8", "14"), ("Samsung Galaxy S23", "14")]
    assert {e["options"] for e in submits} == {"--compute_unit npu --max_profiler_iterations 50"}
    assert all(e["profile"] for e in submits)
    assert {r["compute_unit"] for r in document["results"]} == {"npu"}
    assert document["results"][0]["compute_units"] == {"NPU": 7}
    assert fleet("--ai-hub", FLEET, "--ai-hub-options", "--compute_unit gpu")[0] == 2
    assert "use --compute-unit" in capsys.readouterr().err


def test_clients_before_056_use_submit_profile_job(fleet, monkeypatch):
    fake = sys.modules["qai_hub"]

    def old_submit_inference_job(model, device, inputs=None, name=None, options="", retry=True, project=None):
        raise AssertionError("a profile must not go through an old client's submit_inference_job")

    monkeypatch.setattr(fake, "submit_inference_job", old_submit_inference_job)
    monkeypatch.setattr(fake, "submit_profile_job", lambda model, device, options="": fake.InferenceJob(
        model, device, None, options, True))
    code, document = fleet("--ai-hub", "Google Pixel 8")
    assert code == 0 and document["results"][0]["status"] == "ok"


def test_missing_client_and_usage(fleet, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "qai_hub", None)
    assert fleet("--ai-hub", FLEET)[0] == 2
    assert "needs the 'qai-hub' client: pip install 'spnas[hub]'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--compute-unit", "gpu", str(fleet.models[0])])
    assert "--compute-unit goes with --ai-hub" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ai-hub", FLEET, "--adb", "--benchmark-binary", "x", str(fleet.models[0])])
    assert "separate runs" in capsys.readouterr().err
    pytorch = fleet("--ai-hub", FLEET, artifacts=["pytorch"])
    assert pytorch[0] == 2 and "runs .tflite and .onnx files only" in capsys.readouterr().err


def test_device_outputs_decode_like_the_host(tmp_path):
    runner = type("Runner", (), {"decode": staticmethod(lambda raw: raw.astype(np.float32) * 2)})()
    logits = aihub.decode_outputs(runner, {"Identity": [np.ones((1, 3), np.int8), np.zeros((1, 3), np.int8)]}, 2)
    assert logits.tolist() == [[2, 2, 2], [0, 0, 0]]
    with pytest.raises(aihub.SpnasError, match="returned 1 outputs for 2 inputs"):
        aihub.decode_outputs(runner, {"Identity": [np.ones((1, 3))]}, 2)


def test_verify_gates_each_device_like_the_host(tflite_artifacts, fixture_weights, imagenet_dir, tmp_path,
                                                monkeypatch, capsys):
    """A real int8 .tflite on two fake devices: one returns the host runtime's outputs, one adds noise."""
    from spnas.cli.verify import main as verify

    install_fake_client(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_QAI_HUB_NOISE", json.dumps({"Google Pixel 8": 40}))
    artifact = tflite_artifacts["int8"].path
    out = tmp_path / "parity.json"
    code = verify([str(artifact), "--weights", str(fixture_weights), "--images", str(imagenet_dir), "--num-calib", "1",
                   "--num-parity", "12", "--ai-hub", FLEET, "--json", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 1  # the noisy device fails the int8 gate
    (entry,) = json.loads(out.read_text())["artifacts"]
    good, noisy = entry["ai_hub"]
    assert good["device"]["name"] == "Samsung Galaxy S24" and good["passed"] is True
    assert good["parity"] == entry["parity"]  # same outputs as the host run, so the same figures and gate
    assert good["gate"]["thresholds"] == entry["gate"]["thresholds"] == {"min_sqnr_db": 22.0, "min_top1": 0.85}
    assert good["vs_host"]["sqnr_db"] == "inf" and good["vs_host"]["top1_agreement"] == 1.0
    assert noisy["passed"] is False and any("SQNR" in failure for failure in noisy["gate"]["failures"])
    assert noisy["vs_host"]["sqnr_db"] < 22.0
    assert entry["passed"] is False and entry["gate"]["failures"][0].startswith("Google Pixel 8: ")
    submits = [e for e in hub_log(tmp_path) if e["event"] == "submit"]
    assert [(e["profile"], e["n_inputs"], e["options"]) for e in submits] == [(False, 12, "--compute_unit cpu")] * 2
    assert "AI Hub devices" in printed and "Google Pixel 8" in printed


def test_verify_reports_a_failed_device_job(tflite_artifacts, fixture_weights, imagenet_dir, tmp_path, monkeypatch,
                                            capsys):
    from spnas.cli.verify import main as verify

    install_fake_client(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_QAI_HUB_FAIL", json.dumps({"Google Pixel 8": "Device lost"}))
    out = tmp_path / "parity.json"
    code = verify([str(tflite_artifacts["int8"].path), "--weights", str(fixture_weights), "--images",
                   str(imagenet_dir), "--num-calib", "1", "--num-parity", "4", "--ai-hub", FLEET, "--json", str(out),
                   "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and "JOB FAILED" in captured.out
    (entry,) = json.loads(out.read_text())["artifacts"]
    assert entry["ai_hub"][0]["passed"] is True and "Device lost" in entry["ai_hub"][1]["failure"]
    assert captured.err.strip().startswith("error: 1 AI Hub job(s) failed") and len(captured.err.splitlines()) == 1
