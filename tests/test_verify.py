"""spnas-verify: the CI gate passes good artifacts of every format and fails each broken one."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spnas.export import ExportContext, format_module
from spnas.faults import apply_fault
from spnas.preprocess import DEFAULT_SPEC

VERIFY = [sys.executable, "-m", "spnas.cli.verify"]
SPLIT = ["--num-calib", "128", "--num-parity", "20"]  # as conftest's cli_exports
EXECUTORCH_INSTALLED = importlib.util.find_spec("executorch") is not None  # --format all skips it otherwise

pytestmark = pytest.mark.parity


def run(argv, timeout=900):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def exported(cli_exports):
    """``spnas-export --format all --int8`` on the fixture weights and real images (conftest, once per session)."""
    return cli_exports


@pytest.fixture(scope="module")
def verified(exported, tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify-json")
    artifacts = sorted(str(p) for p in exported.iterdir() if p.suffix != ".json")  # not report.json, quant_plan.json
    result = run([*VERIFY, *artifacts, "--json", str(folder / "parity.json"), "--markdown", str(folder / "parity.md")])
    return result, folder


def test_good_artifacts_of_every_format_pass(verified):
    result, folder = verified
    assert result.returncode == 0, result.stdout + result.stderr
    entries = json.loads((folder / "parity.json").read_text())["artifacts"]
    expected = [("coreml", "fp16"), ("coreml", "int8"), ("onnx", "fp32"), ("onnx", "fp32"), ("onnx", "int8"),
                ("tflite", "fp32"), ("tflite", "int8"), ("tflite", "fp32"),
                ("tflite", "int8")]  # ONNX plain and --coreml-ep, TFLite plain and --app mediapipe
    if EXECUTORCH_INSTALLED:
        expected += [("executorch", "fp32"), ("executorch", "int8")]
    assert sorted((e["format"], e["precision"]) for e in entries) == sorted(expected)
    assert all(e["passed"] is True for e in entries)
    for column in ("artifact", "precision", "top1", "top5", "SQNR dB", "cosine", "max err", "gate"):
        assert column in result.stdout
    markdown = (folder / "parity.md").read_text()
    assert markdown.startswith("| artifact |") and markdown.count("PASSED") == len(expected)


def test_report_and_verify_json_agree(verified, exported):
    _, folder = verified
    report = {a["path"]: a for a in json.loads((exported / "report.json").read_text())["artifacts"]}
    for entry in json.loads((folder / "parity.json").read_text())["artifacts"]:
        reported = report[Path(entry["path"]).name]
        assert entry["parity"] == reported["parity"]
        assert entry["passed"] == reported["passed"]
        assert entry.get("accelerators") == reported.get("accelerators")  # the export's checks of this very file
    assert "accelerators (static checks" in verified[0].stdout


# One real export per fault, spread over the formats; each must fail the default gate (exit 1). The int8
# fault (noise calibration) is test_tflite's and test_onnx's broken-calibration tests.
BROKEN = [
    ("tflite", "fp32", "wrong_mean_std"),
    ("onnx", "fp32", "bgr_channels"),
    ("coreml", "fp16", "shuffled_weight"),
]


@pytest.mark.parametrize("format_name, precision, fault", BROKEN)
def test_broken_artifacts_fail(format_name, precision, fault, fixture_model, calib_pixels, fixture_weights,
                               imagenet_dir, tmp_path, capsys):
    """(``spnas-verify`` in this process: the CLI's own process is tested above, and a new one costs ~5 s.)"""
    from spnas.cli.verify import main as verify

    model, spec, pixels = apply_fault(fault, fixture_model, DEFAULT_SPEC, calib_pixels[:32])
    ctx = ExportContext(model=model, weights=fixture_model.weights_info, preprocessing=spec,
                        calibration_pixels=pixels, out_dir=tmp_path, int8=precision == "int8",
                        progress=lambda message: None)
    (artifact,) = [a for a in format_module(format_name).export(ctx) if a.precision == precision]
    capsys.readouterr()
    code = verify([str(artifact.path), "--weights", str(fixture_weights), "--images", str(imagenet_dir), *SPLIT])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "FAILED" in printed and f"FAIL {artifact.path.name}:" in printed


def test_explain_gives_every_int8_layer(exported, tmp_path):
    artifact = exported / "spnasnet_100_int8.tflite"
    result = run([*VERIFY, str(artifact), "--explain", "--json", str(tmp_path / "p.json"),
                  "--node-data", str(tmp_path / "drift.json")])
    assert result.returncode == 0, result.stderr
    layers = json.loads((tmp_path / "p.json").read_text())["artifacts"][0]["explain"]
    assert [x["layer"] for x in layers][0] == "conv_stem" and layers[-1]["layer"] == "classifier" and len(layers) == 65
    assert all(x["local_sqnr_db"] > 0 and x["sqnr_db"] > 0 for x in layers)
    assert "int8 loss per layer" in result.stdout and "pooled features" in result.stdout
    for path, field in [(tmp_path / "drift.json", "sqnr_db"), (tmp_path / "drift.local_sqnr_db.json", "local_sqnr_db")]:
        node_data = model_explorer_node_data(path)
        assert sorted(r.value for r in node_data.results.values()) == sorted(x[field] for x in layers)
        assert set(node_data.results) <= model_explorer_tflite_tensor_names(artifact)  # the overlay lands on the graph
    from spnas.node_data import write_node_data

    written = write_node_data(tmp_path / "onnx.json", exported / "spnasnet_100_int8.onnx", "onnx", layers)
    assert [p.name for p in written] == ["onnx.json", "onnx.local_sqnr_db.json"]
    import onnx

    nodes = {n.name for n in onnx.load(str(exported / "spnasnet_100_int8.onnx")).graph.node}
    for path in written:
        assert set(model_explorer_node_data(path).results) == {x["layer"] for x in layers} <= nodes


def model_explorer_node_data(path: Path):
    """The file read into Model Explorer's own ``GraphNodeData`` (strict: an unknown field fails)."""
    import dacite
    from model_explorer.node_data_builder import GraphNodeData

    return dacite.from_dict(GraphNodeData, json.loads(path.read_text()), config=dacite.Config(strict=True))


def model_explorer_tflite_tensor_names(artifact: Path) -> set[str]:
    """The output tensor names Model Explorer's TFLite adapter shows on the graph's nodes (node data keys)."""
    from model_explorer.builtin_tflite_flatbuffer_adapter import BuiltinTfliteFlatbufferAdapter

    graph = BuiltinTfliteFlatbufferAdapter().convert(str(artifact), {})["graphCollections"][0].graphs[0]
    return {attr["value"] for node in graph["nodes"] for output in node.get("outputsMetadata", [])
            for attr in output["attrs"] if attr["key"] == "tensor_name"}


@pytest.mark.parametrize("argv, expect", [
    ([], "the following arguments are required: ARTIFACT"),
    (["model.onnx", "--no-such-flag"], "unrecognized arguments"),
    (["missing.tflite"], "no such artifact"),
    (["notes.txt"], "unknown artifact type"),
    (["model.onnx", "--node-data", "drift.json"], "--node-data goes with --explain"),
    (["model.onnx", "model.onnx", "--explain", "--node-data", "drift.json"], "writes the overlay of one artifact"),
])
def test_usage_and_input_errors_exit_2(tmp_path, argv, expect):
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "model.onnx").write_text("")
    result = subprocess.run([*VERIFY, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and expect in result.stderr and "Traceback" not in result.stderr


def test_arm64_needs_tflite(exported):
    result = run([*VERIFY, str(exported / "spnasnet_100_fp32.onnx"), "--arm64"])
    assert result.returncode == 2 and "--arm64 runs .tflite artifacts only" in result.stderr


def test_threshold_override_turns_a_pass_into_a_failure(exported, capsys):
    from spnas.cli.verify import main as verify

    capsys.readouterr()
    code = verify([str(exported / "spnasnet_100_int8.onnx"), "--min-sqnr-db", "80"])
    assert code == 1 and "SQNR" in capsys.readouterr().out
