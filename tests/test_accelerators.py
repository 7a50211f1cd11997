"""Accelerator readiness: the official static checkers run on the artifacts spnas-export wrote (conftest's
``cli_exports``), the verdicts reach the report and the table, and a refused op is parsed as refused."""

from __future__ import annotations

import json

import pytest

from spnas.accelerators.schema import VERDICTS, verdict

SCHEMA = {"checker", "ops_total", "ops_supported", "partitions", "unsupported", "verdict", "messages"}
EXPECTED = {"tflite": {"litert_gpu"}, "onnx": {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram"},
            "executorch": {"xnnpack"}}


@pytest.fixture(scope="module")
def entries(cli_exports) -> dict:
    return {e["path"]: e for e in json.loads((cli_exports / "report.json").read_text())["artifacts"]}


def test_every_tflite_onnx_pte_entry_has_accelerators(entries):
    checked = [e for e in entries.values() if e["format"] in EXPECTED]
    assert len(checked) >= 7  # tflite x4 (plain and MediaPipe), onnx x3 (with the Core ML EP variant), pte x2
    for entry in checked:
        assert set(entry["accelerators"]) == EXPECTED[entry["format"]], entry["path"]
        for block in entry["accelerators"].values():
            assert set(block) >= SCHEMA and block["verdict"] in VERDICTS and block["messages"]
            assert 0 <= block["ops_supported"] <= block["ops_total"]
    assert all("accelerators" not in e for e in entries.values() if e["format"] == "coreml")


def test_litert_gpu_counts_every_op_of_the_model(entries, cli_exports):
    """The analyzer lists every op LiteRT loads; a build whose GPU check passes the canary gives no verdict."""
    from ai_edge_litert.interpreter import Interpreter

    for name in ("spnasnet_100_fp32.tflite", "spnasnet_100_int8.tflite"):
        gpu = entries[name]["accelerators"]["litert_gpu"]
        ops = Interpreter(model_path=str(cli_exports / name))._get_ops_details()  # noqa: SLF001
        assert gpu["ops_total"] == len(ops) and gpu["checker"].startswith("tf.lite.experimental.Analyzer")
        assert any("looks compatible with GPU delegate" in line for line in gpu["messages"])
        assert gpu["verdict"] == ("full" if gpu["canary_refused"] else "unchecked"), gpu


def test_ort_mobile_partitions_int8_qdq_off_core_ml_and_the_variant_whole(entries):
    int8, fp32 = entries["spnasnet_100_int8.onnx"]["accelerators"], entries["spnasnet_100_fp32.onnx"]["accelerators"]
    assert int8["nnapi"]["verdict"] == "full" and int8["nnapi"]["partitions"] == 1
    for core_ml in ("coreml_neuralnetwork", "coreml_mlprogram"):
        block = int8[core_ml]
        assert block["verdict"] == "fragmented" and block["partitions"] > 2
        assert {"ai.onnx:QuantizeLinear", "ai.onnx:DequantizeLinear"} <= {u["op"] for u in block["unsupported"]}
        assert any("worse performance than just using the CPU EP" in line for line in block["messages"])
    assert fp32["coreml_mlprogram"]["verdict"] == "full"
    assert [u["op"] for u in fp32["coreml_neuralnetwork"]["unsupported"]] == ["ai.onnx:ReduceMean"]
    variant = entries["spnasnet_100_fp32_coreml_ep.onnx"]
    assert variant["passed"] is True and variant["app"] == "coreml_ep"
    assert {name: block["verdict"] for name, block in variant["accelerators"].items()} == {
        "nnapi": "full", "coreml_neuralnetwork": "full", "coreml_mlprogram": "full"}


def test_xnnpack_entry_is_the_lowering(entries):
    for precision in ("fp32", "int8"):
        entry = entries[f"spnasnet_100_{precision}.pte"]
        xnnpack, delegation = entry["accelerators"]["xnnpack"], entry["details"]["delegation"]
        assert xnnpack["ops_supported"] == delegation["delegated_ops"] == xnnpack["ops_total"]
        assert xnnpack["verdict"] == "full" and xnnpack["partitions"] == 1


def test_export_prints_one_verdict_per_accelerator_and_no_checker_output(cli_exports):
    stdout = (cli_exports.parent / "stdout.txt").read_text()
    table = stdout[stdout.index("accelerators (static checks"):]
    header = table.splitlines()[1].split()
    assert header[0] == "artifact" and {"litert_gpu", "nnapi", "coreml_mlprogram", "xnnpack"} <= set(header)
    int8_onnx = next(line for line in table.splitlines() if line.startswith("spnasnet_100_int8.onnx")).split()
    assert int8_onnx[header.index("coreml_mlprogram")] == "fragmented"
    assert "Your TFLite model has" not in stdout and "GPU delegate" not in stdout  # the analyzer's print, captured


def test_gpu_canary_is_a_real_analyzer_run(tmp_path):
    """The canary (a FlexCosh op, which no GPU delegate runs) through the real analyzer: refused where the
    build checks, else the build is named as one that checks nothing (TF 2.21's wheel, here)."""
    import tensorflow as tf

    from spnas.accelerators.litert_gpu import canary_refused, check_gpu

    @tf.function(input_signature=[tf.TensorSpec([2, 4], tf.float32)])
    def flex(x):
        return tf.cosh(x) + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([flex.get_concrete_function()], flex)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    (tmp_path / "flex.tflite").write_bytes(converter.convert())
    gpu = check_gpu(tmp_path / "flex.tflite")
    assert gpu["ops_total"] == 2 and gpu["canary_refused"] == canary_refused()
    if gpu["canary_refused"]:
        assert [u["op"] for u in gpu["unsupported"]] == ["FlexCosh"] and gpu["verdict"] == "partial"
    else:
        assert gpu["unsupported"] == [] and gpu["verdict"] == "unchecked"
        assert "refuses nothing in this build" in gpu["messages"][-1]


def test_executorch_vulkan_and_core_ml_partitioners_run_here():
    """Both partitioners tag a small conv net on Linux; the mean-pool head shows what each refuses, in its words."""
    import torch

    from spnas.accelerators.executorch_partitioners import partition_entries

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    results = partition_entries(torch.export.export(net, (torch.zeros(1, 3, 16, 16),)))
    assert set(results) == {"vulkan", "coreml"}
    for block in results.values():
        assert block["ops_total"] >= 4 and block["ops_supported"] > 0 and block["verdict"] in VERDICTS
        assert sum(u["nodes"] for u in block["unsupported"]) == block["ops_total"] - block["ops_supported"]


@pytest.mark.parametrize("total, supported, partitions, expected", [
    (10, 10, 1, "full"), (10, 9, 2, "partial"), (10, 8, 3, "fragmented"), (10, 0, 0, "none")])
def test_verdict_words(total, supported, partitions, expected):
    assert verdict(total, supported, partitions) == expected
