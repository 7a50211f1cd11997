"""ONNX export: the real dynamo exporter, onnxsim, ONNX Runtime quantization and inference.

One fp32 + int8 export per module (calibrated on 16 of the calibration crops to keep CI short);
parity is measured on the 40 held-out ``parity_pixels`` against the PyTorch reference.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from spnas.errors import SpnasError
from spnas.export import ExportContext, load_runner
from spnas.export import onnx as onnx_format
from spnas.parity import compare
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec

pytestmark = pytest.mark.parity

# Measured: 16 real calibration images give top-1 1.0 / 38.0 dB on these 40 images (the benchmark:
# 0.99 / 37.9 dB on 200 with 128).  Broken calibrations land far below: un-normalised pixels 2.5 dB,
# a constant gray image 6.0 dB, images 8x too dark 13.9 dB.  (Uniform noise is *not* broken here:
# 36.7 dB, its normalised values span the same input range as photographs.)
INT8_MIN_TOP1 = 0.95


def cpu_has_vnni() -> bool:
    from spnas.bench.host import machine_facts

    return bool({"avx512_vnni", "avx_vnni"} & set(machine_facts().get("cpu_simd", [])))


# Without VNNI (AVX2 only), ONNX Runtime's U8S8 kernels saturate their 16-bit pair sums: the same export
# measures 29.1 dB on these 40 images (2026-12-02, AMD EPYC with AVX2 only), still far above every broken
# calibration below.
INT8_MIN_SQNR_DB = 32.0 if cpu_has_vnni() else 26.0


def make_context(model, pixels, out_dir, **options) -> ExportContext:
    return ExportContext(model=model, weights=model.weights_info, preprocessing=DEFAULT_SPEC,
                         calibration_pixels=pixels, out_dir=out_dir, int8=True, options=options,
                         progress=lambda message: None)


@pytest.fixture(scope="module")
def artifacts(fixture_model, calib_pixels, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("onnx")
    found = onnx_format.export(make_context(fixture_model, calib_pixels[:16], out_dir))
    return {artifact.precision: artifact for artifact in found}


def test_writes_fp32_and_int8_named_by_contract(artifacts):
    assert sorted(artifacts) == ["fp32", "int8"]
    for precision, artifact in artifacts.items():
        assert artifact.path.name == f"spnasnet_100_{precision}.onnx"
        assert artifact.format == "onnx"
        onnx.checker.check_model(str(artifact.path), full_check=True)
    assert artifacts["int8"].details["activation_type"] == "uint8"
    assert 0 <= artifacts["int8"].details["input_zero_point"] <= 255


def test_fp32_graph_is_clean_with_documented_io(artifacts):
    model = onnx.load(str(artifacts["fp32"].path))
    ops = {node.op_type for node in model.graph.node}
    assert ops == {"Conv", "Relu", "Add", "ReduceMean", "Reshape", "Gemm"}  # BatchNorm folded, nothing else
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = model.graph.input
    assert graph_input.name == "input"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    conv_names = [node.name for node in model.graph.node if node.op_type == "Conv"]
    assert conv_names[0] == "conv_stem" and conv_names[-1] == "conv_head" and "blocks.3.1.conv_dw" in conv_names


def test_fp32_parity_in_onnxruntime(artifacts, parity_pixels, reference_logits):
    runner = load_runner(artifacts["fp32"].path)
    assert (runner.format, runner.precision) == ("onnx", "fp32")
    metrics = compare(reference_logits, runner.run(parity_pixels))
    assert metrics["max_rel_error"] <= 1e-5, metrics


def test_int8_parity_in_onnxruntime(artifacts, parity_pixels, reference_logits):
    runner = onnx_format.load(artifacts["int8"].path, num_threads=1)
    assert runner.precision == "int8"
    metrics = compare(reference_logits, runner.run(parity_pixels))
    assert metrics["top1_agreement"] >= INT8_MIN_TOP1, metrics
    assert metrics["sqnr_db"] >= INT8_MIN_SQNR_DB, metrics


@pytest.mark.parametrize("broken", ["unnormalised pixels", "constant gray images"])
def test_int8_threshold_catches_a_broken_calibration(broken, artifacts, calib_pixels, parity_pixels,
                                                     reference_logits, tmp_path):
    """Same pipeline with a calibration mistake: the int8 parity threshold must reject the result."""
    if broken == "unnormalised pixels":
        pixels, spec = calib_pixels[:4], PreprocessSpec(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    else:
        pixels, spec = np.full((2, 224, 224, 3), 128, dtype=np.uint8), DEFAULT_SPEC
    prepared = onnx_format.prepare_for_quantization(artifacts["fp32"].path, tmp_path / "prepared.onnx")
    ranges = onnx_format.calibrate(prepared, pixels, spec=spec, work_dir=tmp_path)
    broken_path = onnx_format.quantize(prepared, tmp_path / "broken_int8.onnx", ranges)
    metrics = compare(reference_logits, onnx_format.load(broken_path).run(parity_pixels))
    assert metrics["top1_agreement"] < INT8_MIN_TOP1 or metrics["sqnr_db"] < INT8_MIN_SQNR_DB, metrics


def test_int8_graph_has_quantized_convolutions(artifacts, tmp_path):
    """Every Conv reads dequantized int8 weights and activations, and ONNX Runtime fuses them into QLinearConv."""
    model = onnx.load(str(artifacts["int8"].path))
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == 64
    for conv in convs:
        assert producers[conv.input[0]].op_type == "DequantizeLinear", conv.name
        assert producers[conv.input[1]].op_type == "DequantizeLinear", conv.name
    weights = {init.name: init for init in model.graph.initializer}
    assert weights["conv_head.weight_quantized"].data_type == onnx.TensorProto.INT8

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(artifacts["int8"].path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert sum(node.op_type == "QLinearConv" for node in optimized.graph.node) == 64


def test_metadata_round_trips(artifacts, fixture_model):
    for precision, artifact in artifacts.items():
        metadata = onnx_format.read_metadata(artifact.path)
        assert PreprocessSpec.from_dict(json.loads(metadata["spnas.preprocessing"])) == DEFAULT_SPEC
        assert metadata["spnas.num_classes"] == "1000"
        assert json.loads(metadata["spnas.weights"]) == {"source": fixture_model.weights_info.source,
                                                          "sha256": fixture_model.weights_info.sha256}
        assert metadata["spnas.precision"] == precision
        assert "NCHW" in metadata["spnas.input"]
    scheme = json.loads(onnx_format.read_metadata(artifacts["int8"].path)["spnas.int8_scheme"])
    assert scheme["calibration"] == "percentile" and scheme["per_channel"] is True


def test_onnxruntime_modelmeta_shows_labels_and_preprocessing(artifacts):
    """What ``InferenceSession.get_modelmeta()`` (and Netron) show an app developer."""
    import onnxruntime as ort

    from spnas import __version__
    from spnas.classes import read_class_names

    for precision, artifact in artifacts.items():
        meta = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"]).get_modelmeta()
        assert meta.producer_name == "spnas" and meta.graph_name == "spnasnet_100"
        major, minor, patch = (int(part) for part in __version__.split(".")[:3])
        assert meta.version == major * 10000 + minor * 100 + patch  # model_version encodes the spnas version
        assert precision in meta.description and "center crop 224" in meta.description
        assert "subtract mean [0.485, 0.456, 0.406]" in meta.description and "logits" in meta.description
        custom = meta.custom_metadata_map
        assert json.loads(custom["spnas.class_names"]) == read_class_names()
        assert PreprocessSpec.from_dict(json.loads(custom["spnas.preprocessing"])) == DEFAULT_SPEC


def test_runner_uses_the_spec_stored_in_the_model(artifacts, parity_pixels):
    """A model exported with another normalisation is fed with that normalisation, not the default."""
    model = onnx.load(str(artifacts["fp32"].path))
    other = PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for prop in model.metadata_props:
        if prop.key == "spnas.preprocessing":
            prop.value = json.dumps(other.to_dict())
    path = artifacts["fp32"].path.with_name("other_spec.onnx")
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


def test_layer_sqnr_is_keyed_by_timm_names(artifacts, parity_pixels):
    sqnr = onnx_format.layer_sqnr(artifacts["fp32"].path, artifacts["int8"].path, parity_pixels[:4])
    assert len(sqnr) == 64
    assert list(sqnr)[:2] == ["conv_stem", "blocks.0.0.conv_dw"] and "conv_head" in sqnr
    assert all(5.0 < value < 80.0 for value in sqnr.values()), sqnr


def test_bad_files_give_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model\x00\x01")
    with pytest.raises(SpnasError, match="not a valid ONNX file"):
        onnx_format.load(garbage)
    with pytest.raises(SpnasError, match="no such"):
        onnx_format.load(tmp_path / "missing.onnx")


def test_unknown_calibration_option_is_a_user_error(fixture_model, calib_pixels, tmp_path):
    with pytest.raises(SpnasError, match="onnx-calibration"):
        onnx_format.export(make_context(fixture_model, calib_pixels[:1], tmp_path, onnx_calibration="best"))
