"""ExecuTorch: the real exporter (torch.export, PT2E, XNNPACK lowering) and ExecuTorch's own runtime.

The artifacts are the ones ``spnas-export --format all --int8`` writes in conftest's ``cli_exports``
(one export per session: lowering takes ~30 s); parity is measured on the 40 held-out
``parity_pixels`` against the PyTorch reference.  Small hand-made programs cover what the
SPNasNet export cannot show cheaply: the lowering refusing a graph XNNPACK does not take, and a
program with another input size and normalisation.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from spnas.errors import SpnasError
from spnas.parity import compare
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize

if importlib.util.find_spec("executorch") is None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("the executorch extra must be installed in CI", pytrace=False)
    pytest.skip("executorch extra not installed: pip install 'spnas[executorch]'", allow_module_level=True)

import torch  # noqa: E402

from spnas.export import executorch as et  # noqa: E402

pytestmark = pytest.mark.parity

# The int8 .pte lowers the plan: 40.7 dB / top-1 1.0 on these 40 images with a 64-image plan, 0.1 dB under the
# plan's simulation (test_quantize gates the 1 dB); the gate itself is 0.85 / 22 dB.
INT8_MIN_TOP1 = 0.95
INT8_MIN_SQNR_DB = 38.0


@pytest.fixture(scope="module")
def report(cli_exports) -> dict:
    entries = json.loads((cli_exports / "report.json").read_text())["artifacts"]
    return {e["precision"]: e for e in entries if e["format"] == "executorch"}


def test_cli_writes_both_programs_fully_delegated_and_gated(report, cli_exports):
    assert sorted(report) == ["fp32", "int8"]
    for precision, entry in report.items():
        assert entry["path"] == f"spnasnet_100_{precision}.pte" and (cli_exports / entry["path"]).is_file()
        assert entry["passed"] is True and entry["gate"]["status"] == "passed"
        delegation = entry["details"]["delegation"]
        assert delegation["delegated_subgraphs"] == 1 and delegation["non_delegated_ops"] == 0
        assert delegation["portable_kernels"] == []
        assert delegation["delegated_by_op"]["aten_convolution_default"] == 64
    int8 = report["int8"]["details"]
    assert int8["delegation"]["delegated_by_op"][
        "quantized_decomposed_dequantize_per_channel_default"] == 65  # 64 convs + the classifier, per channel
    assert int8["delegation"]["delegated_by_op"]["aten_mean_dim"] == 1  # the pool on the plan's own grid
    assert int8["quantization"]["flow"] == "plan" and int8["quantization"]["plan"] == "quant_plan.json"
    assert report["int8"]["size_bytes"] < 0.3 * report["fp32"]["size_bytes"]


def test_fp32_parity_in_the_executorch_runtime(cli_exports, parity_pixels, reference_logits):
    runner = et.load(cli_exports / "spnasnet_100_fp32.pte")
    assert (runner.format, runner.precision, runner.input_shape) == ("executorch", "fp32", (1, 3, 224, 224))
    metrics = compare(reference_logits, runner.run(parity_pixels))
    assert metrics["max_rel_error"] <= 1e-5, metrics


def test_int8_parity_in_the_executorch_runtime(cli_exports, parity_pixels, reference_logits):
    runner = et.load(cli_exports / "spnasnet_100_int8.pte")
    assert runner.precision == "int8"
    metrics = compare(reference_logits, runner.run(parity_pixels))
    assert metrics["top1_agreement"] >= INT8_MIN_TOP1, metrics
    assert metrics["sqnr_db"] >= INT8_MIN_SQNR_DB, metrics


def test_a_channels_last_view_gives_the_right_logits(cli_exports, parity_pixels):
    """ExecuTorch's binding reads memory as contiguous whatever the strides; the runner must not pass it a view."""
    runner = et.load(cli_exports / "spnasnet_100_fp32.pte")
    hwc = normalize(parity_pixels[:2], layout="NHWC")
    views = [image.transpose(2, 0, 1)[None] for image in hwc]  # what an app gets from an HWC image: a view
    assert not views[0].flags.c_contiguous
    expected = runner.run(parity_pixels[:2])
    got = np.concatenate([runner.invoke(view) for view in views])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    raw = runner.method.execute([torch.from_numpy(views[0])])[0].numpy()  # the binding itself, fed the view
    assert compare(expected[:1], raw)["sqnr_db"] < 20.0  # what the runner protects against: no error, wrong logits
    with pytest.raises(SpnasError, match=r"expected float32 NCHW input \(N, 3, 224, 224\), got .* \(1, 224, 224, 3\)"):
        runner.invoke(hwc[:1])


def test_plan_observers_carry_the_plan(quant_plan, fixture_model):
    """Every quantize op of the converted graph is on a plan tensor's grid, every int8 weight on the plan's
    per-channel scales, and a float layer keeps float weights (its output still on the plan's grid)."""
    from dataclasses import replace

    from spnas.export.executorch_plan import quantize_plan
    from spnas.folding import fold_batchnorm

    plan = replace(quant_plan, float_layers=["blocks.3.1.conv_pwl"])
    graph = quantize_plan(fold_batchnorm(fixture_model), plan, DEFAULT_SPEC, et.export_graph).module()
    grids = {(float(np.float32(g.scale)), g.zero_point) for g in plan.tensors.values()}
    scales = {name: np.asarray(layer.weight_scales, np.float32) for name, layer in plan.layers.items()}
    per_tensor, per_channel = 0, []
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == torch.ops.quantized_decomposed.quantize_per_tensor.default:
            per_tensor += 1
            assert (node.args[1], node.args[2]) in grids, node.args[1:3]
        elif node.target == torch.ops.quantized_decomposed.dequantize_per_channel.default:
            per_channel.append(functools.reduce(getattr, node.args[1].target.split("."), graph).numpy())
    assert per_tensor >= len(plan.tensors) - 1  # the pool's flatten repeats the pool's grid
    assert len(per_channel) == len(plan.layers) - 1  # every layer but the float one
    layer_scales = [s for name, s in scales.items() if name not in plan.float_layers]
    assert all(any(len(a) == len(b) and np.array_equal(a, b) for b in layer_scales) for a in per_channel)


def test_the_pt2e_flow_stays_available(tmp_path):
    """--executorch-int8 pt2e: ExecuTorch's own calibrated flow, recorded as such (not a plan lowering)."""
    from types import SimpleNamespace

    from spnas.export import ExportContext
    from spnas.export.options import FormatOptions
    from spnas.gates import lowers_plan

    spec = PreprocessSpec(input_size=16)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    ctx = ExportContext(model=TinyNet(), weights=SimpleNamespace(source="tiny", sha256="0" * 64), preprocessing=spec,
                        calibration_pixels=pixels, out_dir=tmp_path, int8=True,
                        options=FormatOptions.of(executorch_int8="pt2e"),
                        class_names=list("abcd"), progress=lambda message: None)
    program, details = et.int8_program(ctx)
    quantization = details["quantization"]
    assert quantization["flow"] == "pt2e" and quantization["calibration_images"] == 4
    assert not lowers_plan({"precision": "int8", "details": details})
    content, delegation = et.lower(program, {})
    assert delegation["delegated_by_op"]["quantized_decomposed_dequantize_per_channel_default"] == 1
    (tmp_path / "tiny_int8.pte").write_bytes(content)
    with torch.no_grad():
        expected = TinyNet()(torch.from_numpy(normalize(pixels, spec))).numpy()
    np.testing.assert_allclose(et.load(tmp_path / "tiny_int8.pte").invoke(normalize(pixels, spec)), expected, atol=0.05)
    with pytest.raises(SpnasError, match="executorch_int8='qat': choose from plan, pt2e"):
        FormatOptions.of(executorch_int8="qat")


def test_metadata_read_back_from_the_program(cli_exports, fixture_model):
    from spnas.classes import read_class_names

    for precision in ("fp32", "int8"):
        metadata = et.read_metadata(cli_exports / f"spnasnet_100_{precision}.pte")
        assert PreprocessSpec.from_dict(json.loads(metadata["spnas.preprocessing"])) == DEFAULT_SPEC
        assert json.loads(metadata["spnas.weights"]) == {"source": fixture_model.weights_info.source,
                                                          "sha256": fixture_model.weights_info.sha256}
        assert metadata["spnas.precision"] == precision and metadata["spnas.num_classes"] == "1000"
        assert metadata["spnas.class_names"] == read_class_names() and "NCHW" in metadata["spnas.input"]


class TinyNet(torch.nn.Module):
    """A conv and a mean: enough for a program with its own input size and normalisation."""

    num_classes = 4

    def __init__(self, cumsum: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.cumsum = cumsum

    def forward(self, x):
        y = self.conv(x)
        return (y.cumsum(2) if self.cumsum else y).mean((2, 3), keepdim=True).flatten(1)


def test_program_with_another_size_and_normalisation_is_fed_with_it(tmp_path):
    spec = PreprocessSpec(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    metadata = {"spnas.preprocessing": json.dumps(spec.to_dict()), "spnas.precision": "fp32"}
    content, delegation = et.lower(et.export_graph(TinyNet(), spec), et.metadata_methods(metadata, list("abcd")))
    assert delegation["non_delegated_ops"] == 0
    path = tmp_path / "tiny.pte"
    path.write_bytes(content)
    runner = et.load(path)
    assert runner.spec == spec and runner.class_names == list("abcd") and runner.input_shape == (1, 3, 32, 32)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(runner.prepare(pixels), (pixels / 255.0 - 0.5).transpose(0, 3, 1, 2) / 0.25,
                               atol=1e-6)
    with torch.no_grad():
        expected = TinyNet()(torch.from_numpy(normalize(pixels, spec))).numpy()
    np.testing.assert_allclose(runner.run(pixels), expected, atol=1e-5)
    with pytest.raises(SpnasError, match=r"expected uint8 crops \(N, 32, 32, 3\)"):
        runner.prepare(pixels[:, :16])


def test_lowering_without_provenance_gives_the_same_program(tmp_path, monkeypatch):
    """``lower`` drops the nodes' ``from_node`` chains (their deep copies cost a seventh of an int8 lowering): the
    int8 program lowered with them keeps its delegate's ops and computes the same logits bit for bit."""
    spec = PreprocessSpec(input_size=8)
    methods = et.metadata_methods({"spnas.precision": "int8"}, list("abcd"))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    program = et.quantize_default(TinyNet(), pixels, spec)
    assert any("from_node" in node.meta for node in program.graph.nodes)
    lowered = {"without": et.lower(program, methods)}
    assert not any("from_node" in node.meta for node in program.graph.nodes)
    monkeypatch.setattr(et, "_drop_provenance", lambda exported: None)
    lowered["with"] = et.lower(et.quantize_default(TinyNet(), pixels, spec), methods)
    logits = {}
    for kind, (content, _) in lowered.items():
        (tmp_path / f"{kind}.pte").write_bytes(content)
        logits[kind] = et.load(tmp_path / f"{kind}.pte").run(pixels)
    assert lowered["with"][1] == lowered["without"][1]
    assert np.array_equal(logits["with"].view(np.int32), logits["without"].view(np.int32))


def test_an_op_outside_the_delegate_fails_the_export():
    with pytest.raises(SpnasError, match="outside the XNNPACK delegate.*cumsum"):
        et.lower(et.export_graph(TinyNet(cumsum=True), PreprocessSpec(input_size=8)), {})


def test_the_worker_process_lowers_to_the_same_bytes_and_reports_refusals_in_one_line(monkeypatch):
    """The export lowers fp32 in a child interpreter beside the int8 lowering: a program lowers to the same bytes
    there as in-process (an int8 one too: its quantized ops must load in the child), and the child's side answers
    a refused op with the same one-line error (run here: a second child costs ~15 s of imports)."""
    import io
    import pickle

    spec = PreprocessSpec(input_size=8)
    methods = et.metadata_methods({"spnas.precision": "int8"}, list("abcd"))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    program = et.quantize_default(TinyNet(), pixels, spec)
    with et._lowering_worker(program, methods) as result:
        expected = et.lower(program, methods)
        assert result() == expected
    saved = io.BytesIO()
    torch.export.save(et.export_graph(TinyNet(cumsum=True), spec), saved)
    answer = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", answer)
    et._lower_worker(pickle.dumps((saved.getvalue(), {})))
    status, message = pickle.loads(answer.buffer.getvalue())
    assert status == "error" and re.search("outside the XNNPACK delegate.*cumsum", message)


def test_thread_pool_is_fixed_once_a_program_is_loaded(cli_exports):
    et.load(cli_exports / "spnasnet_100_fp32.pte")
    current = et.set_threads(None)
    with pytest.raises(SpnasError, match="fixed at"):
        et.load(cli_exports / "spnasnet_100_fp32.pte", num_threads=current + 1)
    probe = (f"from spnas.export import executorch as et; r = et.load({str(cli_exports / 'spnasnet_100_int8.pte')!r}, "
             "num_threads=1); print(r.threads, et.set_threads(None))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["1", "1"], result.stderr
    assert "cpuinfo" not in result.stderr and "Failed to load" not in result.stderr  # native start-up noise hidden


def test_not_a_program_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "broken.pte"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(SpnasError, match="broken.pte: ExecuTorch cannot load it"):
        et.load(bad)
    with pytest.raises(SpnasError, match="no such ExecuTorch program"):
        et.load(tmp_path / "missing.pte")


BLOCK_EXECUTORCH = "import sys; sys.modules['executorch'] = None; "


def test_missing_extra_gives_the_install_hint(tmp_path):
    probe = BLOCK_EXECUTORCH + ("from spnas.cli.export import main; "
                                f"sys.exit(main(['--format', 'executorch', '--out', {str(tmp_path)!r}]))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "format 'executorch' needs 'executorch': pip install 'spnas[executorch]'" in result.stderr


def test_format_all_skips_a_missing_extra_and_says_why():
    probe = BLOCK_EXECUTORCH + ("from spnas.export import installed_formats; modules, skipped = installed_formats(); "
                                "print(sorted(modules)); print(skipped['executorch'])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    lines = result.stdout.splitlines()
    assert "'executorch'" not in lines[0] and "'tflite'" in lines[0], result.stderr
    assert lines[1] == "format 'executorch' needs 'executorch': pip install 'spnas[executorch]'"
