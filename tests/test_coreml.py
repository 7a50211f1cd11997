"""CoreML export: real coremltools conversion, parity from the saved packages via spnas.mil_eval.

Exports, once per session: the defaults (fp16 + the W8A8 lowering of the int8 plan), the
variants (fp32 with an image input + weight-only W8) and a plan with float layers (W8A8
lowerings checked against the plan and its torch simulation; a broken plan failing parity in
every format: ``test_quantize.py``).  On macOS the
packages are also run with ``MLModel.predict``.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from dataclasses import replace

import numpy as np
import pytest

from spnas.errors import SpnasError
from spnas.export import ExportContext
from spnas.parity import DEFAULT_THRESHOLDS, compare, sqnr_db
from spnas.preprocess import DEFAULT_SPEC, normalize

pytestmark = pytest.mark.parity

VARIANT_IMAGES = 8  # the variant export is checked on the first parity images only, to keep CI cheap
SIMULATION_TOLERANCE_DB = 1.0  # |SQNR(coreml, ref) - SQNR(simulation, ref)|
MIN_SQNR_VS_SIMULATION_DB = 38.0  # measured 41.5 dB (fp16 compute, protocol images), 44.5 dB at fp32 compute
FLOAT_LAYERS = ["blocks.2.0.conv_pw", "classifier"]


def export(model, calib_pixels, out_dir, quant_plan=None, **options):
    from spnas.export import coreml
    from spnas.export.options import FormatOptions

    ctx = ExportContext(model=model, weights=model.weights_info, preprocessing=DEFAULT_SPEC,
                        calibration_pixels=calib_pixels, out_dir=out_dir, int8=True,
                        options=FormatOptions.of(**options),
                        quant_plan=quant_plan, progress=lambda message: None)
    return {artifact.precision: artifact for artifact in coreml.export(ctx)}


@pytest.fixture(scope="session")
def default_artifacts(fixture_model, calib_pixels, quant_plan, tmp_path_factory):
    """fp16 and the W8A8 package lowering the session's int8 plan: the session's one W8A8 export."""
    return export(fixture_model, calib_pixels, tmp_path_factory.mktemp("coreml"), quant_plan=quant_plan)


@pytest.fixture(scope="session")
def default_plan(default_artifacts, quant_plan):
    """The plan the default export lowered, as it wrote it (quant_plan.json)."""
    from spnas.quantize import PLAN_FILE, load_plan

    written = load_plan(default_artifacts["int8"].path.parent / PLAN_FILE)
    assert written == quant_plan
    return written


@pytest.fixture(scope="session")
def folded(fixture_model):
    from spnas.folding import fold_batchnorm

    return fold_batchnorm(fixture_model)


@pytest.fixture(scope="module")
def variant_artifacts(fixture_model, calib_pixels, tmp_path_factory):
    return export(fixture_model, calib_pixels, tmp_path_factory.mktemp("coreml_variant"), fp32=True,
                  image_input=True, coreml_int8_mode="w8")


@pytest.fixture(scope="module")
def default_logits(default_artifacts, parity_pixels):
    from spnas.export.coreml import load

    return {precision: load(artifact.path).run(parity_pixels) for precision, artifact in default_artifacts.items()}


@pytest.fixture(scope="module")
def default_metrics(default_logits, reference_logits):
    return {precision: compare(reference_logits, logits) for precision, logits in default_logits.items()}


def mil_spec(path):
    from spnas.mil_eval import read_spec

    function = read_spec(path).mlProgram.functions["main"]
    return function.block_specializations[function.opset]


def test_default_export_writes_fp16_and_w8a8_packages(default_artifacts):
    assert sorted(default_artifacts) == ["fp16", "int8"]
    for precision, artifact in default_artifacts.items():
        assert artifact.path.name == f"spnasnet_100_{precision}.mlpackage"
        assert (artifact.path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").is_file()
        assert artifact.format == "coreml"
        assert artifact.details["deployment_target"].startswith("iOS17")
        assert artifact.details["compute_precision"] == "fp16"
    assert default_artifacts["int8"].details["int8_variant"] == "w8a8"
    assert default_artifacts["int8"].details["quantization"]["plan"] == "quant_plan.json"
    assert not list(default_artifacts["fp16"].path.parent.glob(".*.tmp"))  # atomic writes left no temp dirs


def test_metadata_carries_preprocessing_and_class_labels(default_artifacts):
    from spnas.mil_eval import read_spec
    from spnas.preprocess import PreprocessSpec

    spec = read_spec(default_artifacts["fp16"].path)
    assert spec.specificationVersion == 8  # iOS 17 / macOS 14
    metadata = dict(spec.description.metadata.userDefined)
    assert PreprocessSpec.from_dict(json.loads(metadata["spnas.preprocessing"])) == DEFAULT_SPEC
    labels = json.loads(metadata["spnas.class_labels"])
    assert len(labels) == 1000 and labels[0] == "tench"
    assert metadata["spnas.precision"] == "fp16" and metadata["spnas.input"] == "tensor"


def test_every_package_is_a_classifier_with_the_class_names(default_artifacts, variant_artifacts):
    """What Xcode and Vision read: the predicted feature, the probabilities dict, the labels in the classify op."""
    from spnas.classes import read_class_names
    from spnas.mil_eval import read_spec

    for artifact in [*default_artifacts.values(), *variant_artifacts.values()]:
        description = read_spec(artifact.path).description
        assert [output.name for output in description.output] == ["classLabel", "classLabel_probs", "logits"]
        assert description.predictedFeatureName == "classLabel"
        assert description.predictedProbabilitiesName == "classLabel_probs"
        assert description.output[1].type.WhichOneof("Type") == "dictionaryType"
        (classify,) = [op for op in mil_spec(artifact.path).operations if op.type == "classify"]
        labels = [item.immediateValue.tensor.strings.values[0]
                  for item in classify.inputs["classes"].arguments[0].value.immediateValue.list.values]
        assert labels == read_class_names()


def test_mil_eval_runs_the_classifier_outputs(default_artifacts, parity_pixels, reference_logits):
    """classLabel is the reference's top class and classLabel_probs the softmax of the program's logits
    (fp16 softmax: within 1e-3, a few fp16 steps of a probability below 1)."""
    from spnas.classes import read_class_names
    from spnas.mil_eval import MilProgram
    from spnas.preprocess import normalize

    names = read_class_names()
    program = MilProgram(default_artifacts["fp16"].path)
    for i in range(3):
        outputs = program.run({"input": normalize(parity_pixels[i:i + 1], DEFAULT_SPEC)})
        logits = outputs["logits"][0].astype(np.float64)
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert outputs["classLabel"] == names[int(np.argmax(reference_logits[i]))]
        probabilities = np.array([outputs["classLabel_probs"][name] for name in names])
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-3)


def test_evaluator_batch_gives_each_image_its_batch_1_outputs(default_artifacts, default_logits, parity_pixels):
    """The runner evaluates 16 images per pass; each image's logits are bit for bit its batch-1 evaluation."""
    from spnas.mil_eval import MilProgram

    for precision, artifact in default_artifacts.items():
        program = MilProgram(artifact.path)
        assert program.per_image
        for i in (0, 17, len(parity_pixels) - 1):  # first and second pass, and the short last one
            alone = program.run({"input": normalize(parity_pixels[i:i + 1], DEFAULT_SPEC)})["logits"]
            np.testing.assert_array_equal(default_logits[precision][i], alone[0].astype(np.float32))


def test_fp16_package_is_float16_and_matches_reference(default_artifacts, default_metrics):
    block = mil_spec(default_artifacts["fp16"].path)
    conv_types = {op.outputs[0].type.tensorType.dataType for op in block.operations if op.type == "conv"}
    from coremltools.proto import MIL_pb2

    assert conv_types == {MIL_pb2.DataType.Value("FLOAT16")}
    metrics = default_metrics["fp16"]
    assert not DEFAULT_THRESHOLDS["fp16"].failures(metrics)
    assert metrics["sqnr_db"] > 50  # measured ~64 dB; float32 would be > 100 dB, a broken op far below
    assert metrics["top1_agreement"] == 1.0


def test_w8a8_package_matches_reference(default_metrics):
    metrics = default_metrics["int8"]
    assert not DEFAULT_THRESHOLDS["int8"].failures(metrics), metrics


def test_w8a8_package_has_int8_weights_and_activation_quantization(default_artifacts, folded):
    from coremltools.proto import MIL_pb2

    from spnas.io import artifact_size

    block = mil_spec(default_artifacts["int8"].path)
    ops = list(block.operations)
    counts = {kind: sum(op.type == kind for op in ops) for kind in ("conv", "linear", "quantize", "dequantize",
                                                                     "constexpr_affine_dequantize")}
    assert counts["constexpr_affine_dequantize"] == counts["conv"] + counts["linear"] == 65
    weight_types = {op.attributes["quantized_data"].type.tensorType.dataType
                    for op in ops if op.type == "constexpr_affine_dequantize"}
    assert weight_types == {MIL_pb2.DataType.Value("INT8")}
    assert counts["quantize"] == counts["dequantize"] == len(folded.tensor_names())  # every tensor of the walk
    first_compute = next(op for op in ops if op.type not in ("const", "constexpr_affine_dequantize", "cast"))
    assert first_compute.type == "quantize"  # the network input itself is quantized
    assert artifact_size(default_artifacts["int8"].path) < 0.6 * artifact_size(default_artifacts["fp16"].path)


def _argument(program, op, name: str):
    """An op's argument as the evaluator resolves it (a named constant or an immediate value); None if absent."""
    if name not in op.inputs:
        return None
    kind, content = op.inputs[name][0]
    return program.constants[content] if kind == "name" else content


def _grid(program, op) -> tuple[np.ndarray, int]:
    """(scale, int8 zero point) of a quantize op: coremltools writes an int8 zero point of -128 as uint8 with
    zero point 0 (no zero point), the same grid."""
    zero_point = _argument(program, op, "zero_point")
    zero_point = 0 if zero_point is None else int(zero_point)
    return _argument(program, op, "scale"), zero_point - 128 if op.outputs[0][1].dtype == np.uint8 else zero_point


def _layer_ops(program) -> list:
    return [op for op in program.ops if op.type in ("conv", "linear")]


def _int8_weights(weight: np.ndarray, scales, dtype) -> np.ndarray:
    """What constexpr_affine_dequantize gives for the plan's int8 weights on scales stored as ``dtype``."""
    from spnas.quantize.simulate import int8_weight

    stored = np.asarray(scales, np.float32).astype(dtype).astype(np.float32)
    return (int8_weight(weight, scales).astype(np.float32) * stored.reshape(-1, *[1] * (weight.ndim - 1))).astype(dtype)


def test_w8a8_program_carries_the_plan(default_artifacts, default_plan, folded):
    """Every quantize / dequantize pair holds the plan's grid for its tensor, every layer the plan's int8
    weights (of the net its equalization rescaled), per-channel scales and corrected bias (on its int32 grid);
    the fp16 pass stores scales as float16."""
    from spnas.mil_eval import MilProgram
    from spnas.quantize.simulate import conv_inputs, quantize_bias

    program = MilProgram(default_artifacts["int8"].path)
    quantizes = [op for op in program.ops if op.type == "quantize"]
    consumers = {op.inputs["input"][0][1]: op for op in program.ops if op.type == "dequantize"}
    assert len(quantizes) == len(folded.tensor_names())
    for name, quantize in zip(folded.tensor_names(), quantizes, strict=True):
        grid = default_plan.tensors[name]
        scale, zero_point = _grid(program, quantize)
        assert scale.dtype == np.float16 and scale == np.float16(grid.scale) and zero_point == grid.zero_point, name
        dequantize = consumers[quantize.outputs[0][0]]
        assert _argument(program, dequantize, "scale") == scale, name
        assert int(_argument(program, dequantize, "zero_point") or 0) == int(_argument(program, quantize, "zero_point")
                                                                              or 0), name
    inputs = conv_inputs(folded)
    for conv, op in zip(default_plan.equalized(folded).layers(), _layer_ops(program), strict=True):
        layer = default_plan.layers[conv.name]
        weight, bias = _argument(program, op, "weight"), _argument(program, op, "bias")
        np.testing.assert_array_equal(weight, _int8_weights(conv.weight, layer.weight_scales, np.float16),
                                      err_msg=conv.name)
        expected_bias = quantize_bias(layer.bias, default_plan.tensors[inputs[conv.name]].scale, layer.weight_scales)
        np.testing.assert_array_equal(bias, expected_bias.astype(np.float16), err_msg=conv.name)


def test_w8a8_logits_follow_the_plan_simulation(default_logits, default_plan, folded, parity_pixels,
                                                reference_logits):
    from spnas.quantize import simulate

    simulated = simulate(folded, default_plan, normalize(parity_pixels, DEFAULT_SPEC))
    coreml = default_logits["int8"]
    gap = sqnr_db(reference_logits, coreml) - sqnr_db(reference_logits, simulated)
    assert abs(gap) <= SIMULATION_TOLERANCE_DB, gap
    assert sqnr_db(simulated, coreml) > MIN_SQNR_VS_SIMULATION_DB


def test_float_layers_keep_float_weights(fixture_model, default_plan, folded, tmp_path):
    """plan.float_layers: those layers take float weights and the plan's unrounded bias; their outputs
    (every tensor) stay quantized."""
    from spnas.mil_eval import MilProgram

    plan = replace(default_plan, float_layers=FLOAT_LAYERS)
    artifact = export(fixture_model, np.zeros((0, 224, 224, 3), np.uint8), tmp_path, quant_plan=plan)["int8"]
    assert artifact.details["quantization"]["float_layers"] == FLOAT_LAYERS
    program = MilProgram(artifact.path)
    assert program.op_counts["constexpr_affine_dequantize"] == 65 - len(FLOAT_LAYERS)
    assert program.op_counts["quantize"] == len(folded.tensor_names())
    for conv, op in zip(plan.equalized(folded).layers(), _layer_ops(program), strict=True):
        weight, bias = _argument(program, op, "weight"), _argument(program, op, "bias")
        if conv.name in FLOAT_LAYERS:
            np.testing.assert_array_equal(weight, conv.weight.astype(np.float16), err_msg=conv.name)
            np.testing.assert_array_equal(bias, np.asarray(plan.layers[conv.name].bias).astype(np.float16))
        else:
            scales = plan.layers[conv.name].weight_scales
            np.testing.assert_array_equal(weight, _int8_weights(conv.weight, scales, np.float16), err_msg=conv.name)


def test_corrupted_weight_fails_the_parity_gate(default_artifacts, parity_pixels, reference_logits, tmp_path):
    """Negate one conv's weights inside weight.bin: the evaluator must see it."""
    from spnas.export.coreml import load

    package = tmp_path / "spnasnet_100_fp16.mlpackage"
    shutil.copytree(default_artifacts["fp16"].path, package)
    block = mil_spec(package)
    conv = next(op for op in block.operations if op.type == "conv")
    weight_name = conv.inputs["weight"].arguments[0].name
    weight_op = next(op for op in block.operations if op.outputs[0].name == weight_name)
    offset = weight_op.attributes["val"].blobFileValue.offset
    blob = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(blob.read_bytes())
    _, _, size, data_offset = struct.unpack_from("<IIQQ", data, offset)
    weights = np.frombuffer(data, np.float16, size // 2, data_offset)
    data[data_offset:data_offset + size] = (-weights).tobytes()
    blob.write_bytes(bytes(data))
    images = parity_pixels[:VARIANT_IMAGES]
    metrics = compare(reference_logits[:VARIANT_IMAGES], load(package).run(images))
    assert DEFAULT_THRESHOLDS["fp16"].failures(metrics)


def test_fp32_image_input_package_matches_reference_to_float32_precision(variant_artifacts, parity_pixels,
                                                                         reference_logits):
    from spnas.export.coreml import load
    from spnas.mil_eval import read_spec

    artifact = variant_artifacts["fp32"]
    assert artifact.path.name == "spnasnet_100_fp32.mlpackage"
    (model_input,) = read_spec(artifact.path).description.input
    assert model_input.name == "image" and model_input.type.WhichOneof("Type") == "imageType"
    runner = load(artifact.path, backend="mil")
    assert runner.image_input and runner.precision == "fp32"
    metrics = compare(reference_logits[:VARIANT_IMAGES], runner.run(parity_pixels[:VARIANT_IMAGES]))
    assert not DEFAULT_THRESHOLDS["fp32"].failures(metrics), metrics


def test_weight_only_w8_package(variant_artifacts, parity_pixels, reference_logits):
    from spnas.export.coreml import load

    artifact = variant_artifacts["int8"]
    assert artifact.details["int8_variant"] == "w8"
    ops = artifact.details["mil_ops"]
    assert ops["constexpr_affine_dequantize"] == ops["conv"] + ops["linear"]
    assert "quantize" not in ops and "dequantize" not in ops
    metrics = compare(reference_logits[:VARIANT_IMAGES], load(artifact.path).run(parity_pixels[:VARIANT_IMAGES]))
    assert metrics["sqnr_db"] > 30 and metrics["top1_agreement"] == 1.0, metrics


@pytest.mark.skipif(sys.platform != "darwin", reason="MLModel.predict needs macOS: Linux checks the packages with "
                                                      "spnas.mil_eval only")
def test_coreml_runtime_agrees_with_evaluator(default_artifacts, parity_pixels):
    from spnas.export.coreml import load

    images = parity_pixels[:VARIANT_IMAGES]
    min_sqnr_db = {"fp16": 40.0, "int8": 20.0}  # int8: a runtime may round a few values across a step
    for precision, artifact in default_artifacts.items():
        runtime = load(artifact.path, backend="coreml").run(images)
        evaluator = load(artifact.path, backend="mil").run(images)
        assert compare(evaluator, runtime)["sqnr_db"] > min_sqnr_db[precision], artifact.path.name


def test_bad_int8_mode_is_a_one_line_error(fixture_model, calib_pixels, tmp_path):
    with pytest.raises(SpnasError, match="coreml_int8_mode='w4': choose from w8a8, w8"):
        export(fixture_model, calib_pixels, tmp_path, coreml_int8_mode="w4")
    assert not list(tmp_path.iterdir())


def test_load_rejects_what_is_not_a_package(tmp_path):
    from spnas.export.coreml import load

    not_a_package = tmp_path / "model.mlpackage"
    with pytest.raises(SpnasError, match="not an .mlpackage"):
        load(not_a_package)
    not_a_package.mkdir()
    with pytest.raises(SpnasError, match="not an .mlpackage"):
        load(not_a_package)
