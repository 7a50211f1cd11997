"""ONNX export: the real dynamo exporter, onnxsim, the int8 plan lowered by ONNX Runtime's quantizer, inference.

One fp32 + int8 export per session (``onnx_artifacts``; the plan of the session's CLI export,
``quant_plan``); the int8 model is held to the plan's own int8 simulation on the 40
held-out ``parity_pixels`` (a broken plan failing parity in every format: ``test_quantize.py``).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from spnas.errors import SpnasError
from spnas.export import ExportContext, load_runner, onnx_runtime
from spnas.export import onnx as onnx_format
from spnas.export.options import FormatOptions
from spnas.folding import fold_batchnorm
from spnas.gates import evaluate, thresholds_for
from spnas.parity import compare, sqnr_db
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize
from spnas.quantize import simulate

pytestmark = pytest.mark.parity

# The lowering's budget against the plan's simulation: |SQNR(onnx, ref) - SQNR(sim, ref)|.  Measured
# 0.04 dB on the benchmark's 200 images (benchmarks/results/onnx_int8.json): ONNX Runtime computes on
# exactly the plan's grids, weights and int32 biases; what remains is requantization rounding (ties).
SIMULATION_BUDGET_DB = 1.0


def make_context(model, pixels, out_dir, **options) -> ExportContext:
    return ExportContext(model=model, weights=model.weights_info, preprocessing=DEFAULT_SPEC,
                         calibration_pixels=pixels, out_dir=out_dir, int8=True, options=FormatOptions.of(**options),
                         progress=lambda message: None)


@pytest.fixture(scope="session")
def onnx_artifacts(fixture_model, calib_pixels, quant_plan, tmp_path_factory) -> dict:
    """fp32 and int8 ONNX exports of the fixture weights, and the plan the int8 one lowers (the session's)."""
    ctx = make_context(fixture_model, calib_pixels, tmp_path_factory.mktemp("onnx"))
    ctx.quant_plan = quant_plan
    found = {artifact.precision: artifact for artifact in onnx_format.export(ctx)}
    return {**found, "plan": ctx.quant_plan, "out_dir": ctx.out_dir}


@pytest.fixture(scope="session")
def simulated_logits(fixture_model, onnx_artifacts, parity_pixels) -> np.ndarray:
    return simulate(fold_batchnorm(fixture_model), onnx_artifacts["plan"], normalize(parity_pixels, DEFAULT_SPEC))


def lower_to_file(onnx_artifacts, model, plan, path, weights="portable"):
    """``plan`` lowered onto the session's fp32 export (its metadata, marked int8), saved to ``path``."""
    proto = onnx_format.lower(onnx.load(str(onnx_artifacts["fp32"].path)), plan, fold_batchnorm(model), path.parent,
                              weights=weights)
    for prop in proto.metadata_props:
        if prop.key == "spnas.precision":
            prop.value = "int8"
        if prop.key == "spnas.int8_scheme":
            prop.value = json.dumps(onnx_format.scheme(weights))
    onnx.save(proto, str(path))
    return path


def quantize_linear_grids(model) -> dict[str, tuple]:
    """``{plan tensor: [(scale, zero point), ...]}`` of the QDQ graph's QuantizeLinear nodes, found by
    walking the graph from each quantized tensor's producer (independent of ``plan_tensors``)."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    order = {id(node): index for index, node in enumerate(model.graph.node)}

    def source(tensor: str):  # through DequantizeLinear <- QuantizeLinear and Relu to the producing op
        node = producers.get(tensor)
        while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear", "Relu"):
            node = producers.get(node.input[0])
        return node

    def plan_name(tensor: str) -> str:
        node = source(tensor)
        if node is None:
            return tensor  # the graph input
        if node.op_type in ("Conv", "Gemm"):
            return node.name
        if node.op_type == "Add":  # of the block whose last conv runs last (the skip comes from before)
            last = max((source(name) for name in node.input), key=lambda op: order[id(op)])
            assert last.op_type == "Conv" and last.name.endswith(".conv_pwl"), last.name
            return last.name.removesuffix(".conv_pwl") + ".add"
        assert node.op_type in ("ReduceMean", "Reshape"), node.op_type
        return "global_pool"

    grids: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            scale, zero_point = constants[node.input[1]], constants[node.input[2]]
            assert scale.dtype == np.float32 and zero_point.dtype == np.uint8, node.name
            grids.setdefault(plan_name(node.input[0]), []).append((scale.item(), zero_point.item()))
    return grids


def test_writes_fp32_and_int8_named_by_contract(onnx_artifacts):
    for precision in ("fp32", "int8"):
        artifact = onnx_artifacts[precision]
        assert artifact.path.name == f"spnasnet_100_{precision}.onnx"
        assert artifact.format == "onnx"
        onnx.checker.check_model(str(artifact.path), full_check=True)
    quantization = onnx_artifacts["int8"].details["quantization"]
    assert quantization["plan"] == "quant_plan.json" and quantization["activation_type"] == "uint8"
    assert (onnx_artifacts["out_dir"] / "quant_plan.json").is_file()
    input_grid = onnx_artifacts["plan"].tensors["input"].as_uint8()
    assert onnx_artifacts["int8"].details["input_zero_point"] == input_grid[1]
    assert onnx_artifacts["int8"].details["input_scale"] == pytest.approx(input_grid[0], rel=1e-7)


def test_fp32_graph_is_clean_with_documented_io(onnx_artifacts):
    model = onnx.load(str(onnx_artifacts["fp32"].path))
    ops = {node.op_type for node in model.graph.node}
    assert ops == {"Conv", "Relu", "Add", "ReduceMean", "Reshape", "Gemm"}  # BatchNorm folded, nothing else
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = model.graph.input
    assert graph_input.name == "input"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    conv_names = [node.name for node in model.graph.node if node.op_type == "Conv"]
    assert conv_names[0] == "conv_stem" and conv_names[-1] == "conv_head" and "blocks.3.1.conv_dw" in conv_names
    assert [node.name for node in model.graph.node if node.op_type == "Gemm"] == ["classifier"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_dynamic_batch_session_gives_the_batch_1_logits(onnx_artifacts, parity_pixels, precision):
    """Validation's dynamic-batch session (``load_runner(batch=...)``): 12 images in runs of 8 and 4, each image's
    logits bit for bit those of the exported batch-1 graph."""
    path = onnx_artifacts[precision].path
    batched = load_runner(path, batch=8)
    assert batched.session.get_inputs()[0].shape[0] == "N" and batched.batch_size == 8
    np.testing.assert_array_equal(batched.run(parity_pixels[:12]), load_runner(path).run(parity_pixels[:12]))


def test_fp32_parity_in_onnxruntime(onnx_artifacts, parity_pixels, reference_logits):
    runner = load_runner(onnx_artifacts["fp32"].path)
    assert (runner.format, runner.precision) == ("onnx", "fp32")
    metrics = compare(reference_logits, runner.run(parity_pixels))
    assert metrics["max_rel_error"] <= 1e-5, metrics


def test_every_quantize_linear_is_on_the_plans_grid(onnx_artifacts):
    """(a) Every activation the int8 model quantizes, and only those, is on the plan's grid (uint8:
    zero point + 128), the classifier's logits included; weights on the plan's per-channel scales."""
    plan = onnx_artifacts["plan"]
    model = onnx.load(str(onnx_artifacts["int8"].path))
    grids = quantize_linear_grids(model)
    assert sorted(grids) == sorted(plan.tensors)
    for name, found in grids.items():
        scale, zero_point = plan.tensors[name].as_uint8()
        assert found == [(float(np.float32(scale)), zero_point)] * len(found), name
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for layer, quant in plan.layers.items():
        scales = constants[f"{layer}.weight_scale"]
        np.testing.assert_allclose(scales, quant.weight_scales, rtol=np.finfo(np.float32).eps, atol=0, err_msg=layer)
        weights, zero_points = constants[f"{layer}.weight_quantized"], constants[f"{layer}.weight_zero_point"]
        if ".conv_dw" in layer:  # portable: int8 where ORT's kernels are exact anyway, uint8 + 128 elsewhere
            assert weights.dtype == np.int8 and not zero_points.any(), layer
        else:
            assert weights.dtype == np.uint8 and (zero_points == 128).all() and weights.min() >= 1, layer
    onnx_format.check_lowering(model, plan)  # the export's own check agrees
    with pytest.raises(SpnasError, match=r"conv_stem: weights are not int8 with zero point 0 \(the u8s8 encoding"):
        onnx_format.check_lowering(model, plan, weights="u8s8")


def test_u8s8_encoding_holds_the_same_integers(onnx_artifacts, fixture_model, parity_pixels, tmp_path, monkeypatch):
    """--onnx-int8 u8s8 stores int8 weights everywhere: the same integers as portable (uint8 - 128), so
    on this CPU (VNNI: both exact) the same logits; without VNNI spnas-verify says why its figures differ."""
    plan = onnx_artifacts["plan"]
    path = lower_to_file(onnx_artifacts, fixture_model, plan, tmp_path / "u8s8.onnx", weights="u8s8")
    portable, u8s8 = onnx.load(str(onnx_artifacts["int8"].path)), onnx.load(str(path))
    constants = [{init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
                 for model in (portable, u8s8)]
    for layer in plan.layers:
        name = f"{layer}.weight_quantized"
        assert constants[1][name].dtype == np.int8, layer
        shift = 128 if constants[0][name].dtype == np.uint8 else 0
        np.testing.assert_array_equal(constants[0][name].astype(np.int16) - shift, constants[1][name], err_msg=layer)
    runner = onnx_format.load(path, num_threads=1)
    assert runner.weight_encoding == "u8s8" and onnx_format.load(onnx_artifacts["int8"].path).weight_encoding \
        == "portable"
    if onnx_runtime.host_has_vnni():
        np.testing.assert_array_equal(runner.run(parity_pixels[:4]),
                                      onnx_format.load(onnx_artifacts["int8"].path, num_threads=1)
                                      .run(parity_pixels[:4]))
    monkeypatch.setattr(onnx_runtime, "host_has_vnni", lambda: False)
    monkeypatch.setattr(onnx_runtime.platform, "machine", lambda: "x86_64")
    assert "without VNNI" in runner.cpu_warning() and "--onnx-int8 portable" in runner.cpu_warning()
    assert onnx_format.load(onnx_artifacts["int8"].path).cpu_warning() is None


def test_the_lowering_check_names_a_drifted_tensor(onnx_artifacts):
    """The in-code check (``check_lowering``) is not vacuous: one ulp off one grid, or one weight scale, fails it."""
    plan = onnx_artifacts["plan"]
    model = onnx.load(str(onnx_artifacts["int8"].path))
    tensor = onnx_format.plan_tensors(model, plan)["blocks.3.1.conv_dw"][0]
    scale = next(init for init in model.graph.initializer if init.name == f"{tensor}_scale")
    original = numpy_helper.to_array(scale)
    scale.CopyFrom(numpy_helper.from_array(np.nextafter(original, np.float32(1)), scale.name))
    with pytest.raises(SpnasError, match=r"blocks\.3\.1\.conv_dw \("):
        onnx_format.check_lowering(model, plan)
    scale.CopyFrom(numpy_helper.from_array(original, scale.name))
    weight = next(init for init in model.graph.initializer if init.name == "blocks.2.0.conv_pw.weight_scale")
    values = numpy_helper.to_array(weight).copy()
    values[3] *= 1.001
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    with pytest.raises(SpnasError, match=r"blocks\.2\.0\.conv_pw: weight scales"):
        onnx_format.check_lowering(model, plan)


def test_int8_graph_is_fully_quantized_and_fused(onnx_artifacts, tmp_path):
    """Every Conv and the classifier read dequantized int8 weights and activations, and ONNX Runtime
    fuses them into QLinearConv / QGemm."""
    model = onnx.load(str(onnx_artifacts["int8"].path))
    producers = {out: node for node in model.graph.node for out in node.output}
    layers = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    assert len(layers) == 65
    for layer in layers:
        assert producers[layer.input[0]].op_type == "DequantizeLinear", layer.name
        assert producers[layer.input[1]].op_type == "DequantizeLinear", layer.name
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(onnx_artifacts["int8"].path), options, providers=["CPUExecutionProvider"])
    optimized = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert optimized.count("QLinearConv") == 64 and optimized.count("QGemm") == 1


def test_int8_tracks_the_plans_simulation(onnx_artifacts, parity_pixels, reference_logits, simulated_logits):
    """(b) The ONNX int8 model computes the plan's function: as close to float as the simulation."""
    logits = onnx_format.load(onnx_artifacts["int8"].path, num_threads=1).run(parity_pixels)
    gap = sqnr_db(reference_logits, logits) - sqnr_db(reference_logits, simulated_logits)
    assert abs(gap) <= SIMULATION_BUDGET_DB, (gap, sqnr_db(simulated_logits, logits))


def test_int8_passes_the_default_gate(onnx_artifacts, parity_pixels, reference_logits):
    runner = onnx_format.load(onnx_artifacts["int8"].path, num_threads=1)
    assert runner.precision == "int8"
    result = evaluate(runner, parity_pixels, reference_logits, thresholds=thresholds_for("int8"))
    assert result["passed"], result


def test_float_layers_stay_float_with_their_outputs_on_the_plans_grid(onnx_artifacts, fixture_model, parity_pixels,
                                                                      tmp_path):
    """``plan.float_layers`` (the fallback) keep float weights; their outputs, the logits of a float
    classifier and the pool feeding it included, are still quantized on the plan's grids."""
    kept = ["blocks.2.1.conv_pw", "blocks.2.1.conv_dw", "classifier"]  # two adjacent float convs
    plan = replace(onnx_artifacts["plan"], float_layers=kept)
    path = lower_to_file(onnx_artifacts, fixture_model, plan, tmp_path / "float_layers_int8.onnx")
    model = onnx.load(str(path))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    weight_source = {node.name: producers.get(node.input[1], "initializer")
                     for node in model.graph.node if node.op_type in ("Conv", "Gemm")}
    assert {name for name, source in weight_source.items() if source == "initializer"} == set(kept)
    assert sorted(quantize_linear_grids(model)) == sorted(plan.tensors)
    logits = onnx_format.load(path).run(parity_pixels[:8])
    simulated = simulate(fold_batchnorm(fixture_model), plan, normalize(parity_pixels[:8], DEFAULT_SPEC))
    assert sqnr_db(simulated, logits) >= 30.0


def test_metadata_round_trips(onnx_artifacts, fixture_model):
    for precision in ("fp32", "int8"):
        metadata = onnx_runtime.read_metadata(onnx_artifacts[precision].path)
        assert PreprocessSpec.from_dict(json.loads(metadata["spnas.preprocessing"])) == DEFAULT_SPEC
        assert metadata["spnas.num_classes"] == "1000"
        assert json.loads(metadata["spnas.weights"]) == {"source": fixture_model.weights_info.source,
                                                          "sha256": fixture_model.weights_info.sha256}
        assert metadata["spnas.precision"] == precision
        assert "NCHW" in metadata["spnas.input"]
    scheme = json.loads(onnx_runtime.read_metadata(onnx_artifacts["int8"].path)["spnas.int8_scheme"])
    assert scheme["plan"] == "quant_plan.json" and scheme["per_channel"] is True
    assert scheme["activation_type"] == "uint8" and scheme["reduce_range"] is False
    assert scheme["weight_encoding"] == "portable"


def test_onnxruntime_modelmeta_shows_labels_and_preprocessing(onnx_artifacts):
    """What ``InferenceSession.get_modelmeta()`` (and Netron) show an app developer."""
    from spnas.classes import read_class_names
    from spnas.version import __version__

    for precision in ("fp32", "int8"):
        meta = ort.InferenceSession(str(onnx_artifacts[precision].path),
                                    providers=["CPUExecutionProvider"]).get_modelmeta()
        assert meta.producer_name == "spnas" and meta.graph_name == "spnasnet_100"
        major, minor, patch = (int(part) for part in __version__.split(".")[:3])
        assert meta.version == major * 10000 + minor * 100 + patch  # model_version encodes the spnas version
        assert precision in meta.description and "center crop 224" in meta.description
        assert "subtract mean [0.485, 0.456, 0.406]" in meta.description and "logits" in meta.description
        custom = meta.custom_metadata_map
        assert json.loads(custom["spnas.class_names"]) == read_class_names()
        assert PreprocessSpec.from_dict(json.loads(custom["spnas.preprocessing"])) == DEFAULT_SPEC


def test_runner_uses_the_spec_stored_in_the_model(onnx_artifacts, parity_pixels, tmp_path):
    """A model exported with another normalisation is fed with that normalisation, not the default."""
    model = onnx.load(str(onnx_artifacts["fp32"].path))
    other = PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for prop in model.metadata_props:
        if prop.key == "spnas.preprocessing":
            prop.value = json.dumps(other.to_dict())
    path = tmp_path / "other_spec.onnx"
    onnx.save(model, str(path))
    runner = onnx_format.load(path)
    assert runner.spec == other
    expected = (parity_pixels[:1].astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(runner.prepare(parity_pixels[:1]), expected.transpose(0, 3, 1, 2), atol=1e-6)


def test_dynamic_batch_export(fixture_model, parity_pixels, reference_logits, tmp_path):
    context = make_context(fixture_model, parity_pixels[:1], tmp_path, dynamic_batch=True)
    context.int8 = False
    (artifact,) = onnx_format.export(context)
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    runner = onnx_format.load(artifact.path)
    batch = runner.prepare(parity_pixels[:3])
    logits = session.run(None, {"input": batch})[0]
    assert logits.shape == (3, 1000)
    assert compare(reference_logits[:3], logits)["max_rel_error"] <= 1e-5


def test_bad_files_give_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model\x00\x01")
    with pytest.raises(SpnasError, match="not a valid ONNX file"):
        onnx_format.load(garbage)
    with pytest.raises(SpnasError, match="no such"):
        onnx_format.load(tmp_path / "missing.onnx")
