"""spnas.quantize: one int8 plan, lowered by every format.

The plan round-trips through ``quant_plan.json``; ``--plan`` reproduces the int8 artifacts; the
torch int8 simulation predicts each runtime's logits within 1 dB of SQNR; the int8 artifacts of
one export agree with each other (gated); a broken plan fails parity in every format.  The
artifacts are the session's shared ``spnas-export --format all --int8`` run (conftest ``cli_exports``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from spnas.errors import SpnasError
from spnas.quantize import PLAN_FILE, QuantPlan, TensorQuant, load_plan, save_plan

# The int8 artifacts that lower the plan (--format all skips ExecuTorch when its extra is missing).
PLAN_FORMATS = ("tflite", "onnx", "coreml") + (("executorch",) if importlib.util.find_spec("executorch") else ())
# A broken plan's failure is followed by exporting each format again; ExecuTorch's is checked on the converted
# graph instead (test_executorch: every quantize op on the plan's grid), which costs no second XNNPACK lowering.
BROKEN_PLAN_FORMATS = ("tflite", "onnx", "coreml")
SIMULATION_TOLERANCE_DB = 1.0
# One mid-network tensor's scale x64 (x4 on any single conv costs under 2.5 dB: the net shrugs it off);
# its simulation measures 15.8 dB / top-1 0.675 on the parity images, against the 22 dB / 0.85 gate.
BROKEN_TENSOR, BROKEN_FACTOR = "blocks.3.1.conv_pwl", 64.0


@pytest.fixture(scope="module")
def exported(cli_exports):
    report = json.loads((cli_exports / "report.json").read_text())
    return cli_exports, report, load_plan(cli_exports / PLAN_FILE)


@pytest.fixture(scope="module")
def folded(fixture_model):
    from spnas.folding import fold_batchnorm

    return fold_batchnorm(fixture_model)


@pytest.fixture(scope="module")
def export_parity(exported, fixture_model):
    """The export's own parity images and their reference logits."""
    from spnas.images import load_images
    from spnas.reference import TorchRunner

    _, report, _ = exported
    root = Path(report["parity_images"]["source"])
    images = load_images([root / e["file"] for e in report["parity_images"]["manifest"]], root)
    return images.pixels, TorchRunner(fixture_model).run(images.pixels)


def plan_entries(report) -> dict[str, dict]:
    return {e["format"]: e for e in report["artifacts"]
            if e["precision"] == "int8" and not e.get("app") and e["format"] in PLAN_FORMATS}


def test_plan_round_trips_and_checks_its_weights(exported, folded, tmp_path):
    _, _, plan = exported
    assert QuantPlan.from_json(plan.to_json()) == plan
    assert load_plan(save_plan(plan, tmp_path)) == plan
    assert list(plan.tensors) == folded.tensor_names() and len(plan.layers) == 65
    plan.check(folded)
    with pytest.raises(SpnasError, match="computed for weights sha256"):
        plan.check(folded, "0" * 64)
    short = replace(plan, layers={**plan.layers, "conv_stem": replace(plan.layers["conv_stem"], bias=[0.0])})
    with pytest.raises(SpnasError, match="conv_stem: wrong number of channels"):
        short.check(folded)
    bad = replace(plan, tensors={**plan.tensors, "global_pool": TensorQuant(0.0, 0)})
    with pytest.raises(SpnasError, match="invalid scale or zero point for global_pool"):
        bad.check(folded)
    (tmp_path / "broken.json").write_text('{"schema": "spnas.quant_plan/1", "tensors": {}}')
    with pytest.raises(SpnasError, match="not a quant plan"):
        load_plan(tmp_path / "broken.json")


def test_the_plan_carries_its_equalization_and_keeps_the_float_function(exported, folded, parity_pixels, tmp_path):
    """Every format builds ``plan.lowered_net(folded)``: the folded net with the plan's per-channel factors, the
    same float function with flatter ReLU outputs; a file without the field (schema 1) means no equalization."""
    from spnas.folding import relu_producers
    from spnas.preprocess import normalize

    _, _, plan = exported
    assert plan.method["equalization"]["rule"] == "activation ranges"
    assert sorted(plan.equalization) == sorted(relu_producers(folded))
    assert max(max(factors) for factors in plan.equalization.values()) > 1.5  # it rescaled weak channels
    x = normalize(parity_pixels[:4])
    equalized = plan.equalized(folded)
    assert not np.array_equal(equalized.stem.weight, folded.stem.weight)
    np.testing.assert_allclose(equalized.forward(x), folded.forward(x), rtol=1e-4, atol=1e-4)
    net = plan.lowered_net(folded)
    assert all(np.array_equal(conv.bias, np.asarray(plan.layers[conv.name].bias, np.float32)) for conv in net.layers())
    legacy = json.loads(plan.to_json())
    del legacy["equalization"]
    (tmp_path / "v1.json").write_text(json.dumps({**legacy, "schema": "spnas.quant_plan/1"}))
    assert load_plan(tmp_path / "v1.json").equalization == {}
    for wrong in ({"conv_head": [1.0] * 1280}, {"conv_stem": [1.0] * 3}, {"conv_stem": [0.0] * 32}):
        with pytest.raises(SpnasError, match="quant plan equalization"):
            replace(plan, equalization=wrong).check(folded)


def test_equalization_is_skipped_below_its_image_count(folded, calib_pixels):
    """With fewer than EQUALIZATION_MIN_IMAGES calibration images equalizing cost up to 1.4 dB (32 images) or was
    mixed (64): the plan stays unequalized and says why."""
    from spnas.quantize import EQUALIZATION_MIN_IMAGES, PixelBatches, build_plan

    assert len(calib_pixels) < EQUALIZATION_MIN_IMAGES
    plan = build_plan(folded, PixelBatches(calib_pixels), bias_correction=False)
    assert plan.equalization == {} and plan.method["equalization"]["rule"] == "skipped"
    assert f"{len(calib_pixels)} calibration images" in plan.method["equalization"]["reason"]


def test_every_int8_export_lowers_the_one_plan(exported):
    _, report, plan = exported
    entries = plan_entries(report)
    assert sorted(entries) == sorted(PLAN_FORMATS)
    for entry in entries.values():
        quantization = entry["details"]["quantization"]
        assert quantization["plan"] == PLAN_FILE and quantization["range_setting"] == plan.method["range_setting"]


def test_simulation_predicts_each_runtime_within_1_db(exported, folded, export_parity):
    from spnas.parity import sqnr_db
    from spnas.preprocess import normalize
    from spnas.quantize import simulate

    _, report, plan = exported
    pixels, reference = export_parity
    simulated = sqnr_db(reference, simulate(folded, plan, normalize(pixels)))
    measured = {fmt: entry["parity"]["sqnr_db"] for fmt, entry in plan_entries(report).items()}
    assert all(abs(value - simulated) <= SIMULATION_TOLERANCE_DB for value in measured.values()), (simulated, measured)


def test_int8_artifacts_agree_with_each_other_and_the_gate_is_checked(exported):
    from spnas.gates import AGREEMENT_MARGIN_DB

    out, report, _ = exported
    agreement = report["int8_agreement"]
    assert agreement["passed"] and agreement["margin_db_over_sqnr_vs_float"] == AGREEMENT_MARGIN_DB
    entries = {e["path"]: e for e in plan_entries(report).values()}
    assert {p for pair in agreement["pairs"] for p in pair["artifacts"]} == set(entries)
    assert len(agreement["pairs"]) == len(entries) * (len(entries) - 1) // 2
    for pair in agreement["pairs"]:  # closer to each other than either is to float
        better = max(entries[path]["parity"]["sqnr_db"] for path in pair["artifacts"])
        assert pair["min_sqnr_db"] == pytest.approx(better + AGREEMENT_MARGIN_DB, abs=0.01)
        assert pair["sqnr_db"] >= pair["min_sqnr_db"], agreement


def test_each_lowering_is_gated_against_the_plan_simulation(exported):
    """report.json's int8_plan: the simulation at the pooled features and the logits; each lowering closer to
    it than it is to float, and against float no more than 3 dB under it."""
    from spnas.gates import MAX_BELOW_SIMULATION_DB, MIN_POOLED_SQNR_DB

    _, report, _ = exported
    simulation = report["int8_plan"]["simulation"]
    assert report["int8_plan"]["passed"]
    assert MIN_POOLED_SQNR_DB < simulation["pooled_sqnr_db"] < simulation["logit_sqnr_db"]
    for entry in plan_entries(report).values():
        assert entry["vs_simulation"]["passed"] and entry["vs_simulation"]["sqnr_db"] > simulation["logit_sqnr_db"]
        assert entry["gate"]["thresholds"]["min_sqnr_db"] == pytest.approx(
            simulation["logit_sqnr_db"] - MAX_BELOW_SIMULATION_DB, abs=0.01)


def test_pairwise_floor_fails_the_verify_run(exported, capsys):
    from spnas.cli.verify import main as verify

    out, report, _ = exported
    paths = [str(out / e["path"]) for e in plan_entries(report).values() if e["format"] != "coreml"]
    capsys.readouterr()
    code = verify([*paths, "--min-int8-agreement-db", "90"])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "int8 artifacts against each other" in printed and "FAILED" in printed
    assert "FAIL spnasnet_100_int8" not in printed  # each artifact alone passes: only the pair gate failed


def test_layer_drift_runs_on_the_simulation_for_every_format(exported, folded, parity_pixels):
    from spnas.parity import sqnr_db
    from spnas.preprocess import normalize
    from spnas.quantize import simulate
    from spnas.quantize.drift import layer_drift

    _, _, plan = exported
    x = normalize(parity_pixels[:2])
    drift = layer_drift(folded, plan, x)
    assert [d["layer"] for d in drift] == [conv.name for conv in folded.layers()]
    assert all(10.0 < d["sqnr_db"] < 80.0 and 10.0 < d["local_sqnr_db"] < 80.0 for d in drift), drift
    reference = plan.equalized(folded).forward(x)  # the float net whose inner tensors the plan quantizes
    assert drift[-1]["sqnr_db"] == pytest.approx(sqnr_db(reference, simulate(folded, plan, x)), abs=1e-6)


def test_plan_reproduces_the_int8_artifacts(exported, fixture_model, tmp_path):
    """``--plan`` lowers without calibrating: the same bytes for TFLite and ONNX."""
    from spnas.export import ExportContext, format_module
    from spnas.preprocess import DEFAULT_SPEC

    out, report, plan = exported
    for fmt in ("tflite", "onnx"):
        ctx = ExportContext(model=fixture_model, weights=fixture_model.weights_info, preprocessing=DEFAULT_SPEC,
                            calibration_pixels=np.zeros((0, 224, 224, 3), np.uint8), out_dir=tmp_path / fmt,
                            int8=True, quant_plan=plan, progress=lambda message: None)
        ctx.out_dir.mkdir()
        (artifact,) = [a for a in format_module(fmt).export(ctx) if a.precision == "int8"]
        assert artifact.path.read_bytes() == (out / plan_entries(report)[fmt]["path"]).read_bytes(), fmt
        assert load_plan(ctx.out_dir / PLAN_FILE) == plan


@pytest.mark.parametrize("fmt", BROKEN_PLAN_FORMATS)
def test_a_broken_plan_fails_parity_in_every_format(quant_plan, folded, fixture_model, parity_pixels,
                                                    reference_logits, tmp_path, fmt):
    """Every lowering follows the plan into the failure, as the broken plan's own simulation does."""
    from spnas.export import ExportContext, format_module
    from spnas.gates import evaluate
    from spnas.parity import compare
    from spnas.preprocess import DEFAULT_SPEC, normalize
    from spnas.quantize import simulate

    grid = quant_plan.tensors[BROKEN_TENSOR]
    broken = replace(quant_plan, tensors={**quant_plan.tensors,
                                          BROKEN_TENSOR: TensorQuant(grid.scale * BROKEN_FACTOR, grid.zero_point)})
    ctx = ExportContext(model=fixture_model, weights=fixture_model.weights_info, preprocessing=DEFAULT_SPEC,
                        calibration_pixels=np.zeros((0, 224, 224, 3), np.uint8), out_dir=tmp_path, int8=True,
                        quant_plan=broken, progress=lambda message: None)
    module = format_module(fmt)
    (artifact,) = [a for a in module.export(ctx) if a.precision == "int8"]
    pixels, reference = parity_pixels[:20], reference_logits[:20]
    result = evaluate(module.load(artifact.path), pixels, reference)
    simulated = compare(reference, simulate(folded, broken, normalize(pixels)))
    assert result["passed"] is False and any("SQNR" in f for f in result["gate"]["failures"]), result
    assert abs(result["parity"]["sqnr_db"] - simulated["sqnr_db"]) <= 2.0, (result["parity"], simulated)
