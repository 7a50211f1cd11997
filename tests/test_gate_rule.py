"""Int8 gates that fit any head: relative to the same images' int8-vs-float SQNR, on the plan's simulation.

On a user's few-class fine-tune (every layer trained, made by the test: conftest ``finetune_export``) a
correct export passes with default flags, a fault fails, ``--explain`` gives each layer's local loss beside
the accumulated one and the pooled-feature SQNR beside the logits', and the fallback picks layers by the
loss they add.  ``benchmarks/gate_rule.py`` measures the rule on four models and every fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spnas.gates import MAX_BELOW_SIMULATION_DB, MIN_POOLED_SQNR_DB, SIMULATION_MARGIN_DB


@pytest.fixture(scope="module")
def finetune(finetune_export):
    out, folder = finetune_export
    report = json.loads((out / "report.json").read_text())
    return out, folder, report, next(e for e in report["artifacts"] if e["precision"] == "int8")


def test_a_few_class_fine_tune_passes_the_relative_gate(finetune):
    out, _, report, entry = finetune
    assert report["classes"]["num_classes"] == 4 and report["preprocessing"]["input_size"] == 160
    plan = report["int8_plan"]
    simulation = plan["simulation"]
    assert plan["file"] == "quant_plan.json" and plan["passed"] and plan["n_images"] == 24
    assert simulation["pooled_sqnr_db"] >= MIN_POOLED_SQNR_DB and plan["min_pooled_sqnr_db"] == MIN_POOLED_SQNR_DB
    thresholds = entry["gate"]["thresholds"]
    assert thresholds["min_sqnr_db"] == pytest.approx(simulation["logit_sqnr_db"] - MAX_BELOW_SIMULATION_DB, abs=0.01)
    assert entry["passed"] is True and entry["parity"]["sqnr_db"] >= thresholds["min_sqnr_db"]
    vs_simulation = entry["vs_simulation"]
    assert vs_simulation["passed"] and vs_simulation["min_sqnr_db"] == pytest.approx(
        simulation["logit_sqnr_db"] + SIMULATION_MARGIN_DB, abs=0.01)
    assert vs_simulation["sqnr_db"] > entry["parity"]["sqnr_db"]  # the runtime is closer to its plan than to float


def test_a_fault_in_the_lowering_fails_against_the_simulation(finetune, tmp_path):
    """The fine-tune's own plan lowered from a broken model (one depthwise kernel shuffled): the artifact no
    longer computes the plan, whatever its head."""
    import spnas
    from spnas.export import ExportContext
    from spnas.export.tflite import export, load
    from spnas.faults import apply_fault
    from spnas.gates import gate_lowering, simulate_plan
    from spnas.images import load_images
    from spnas.quantize import load_plan
    from spnas.reference import TorchRunner
    from spnas.source import resolve_source

    out, folder, report, _ = finetune
    source = resolve_source(str(folder))
    model = spnas.create_model(source.checkpoint)
    root = Path(report["parity_images"]["source"])
    pixels = load_images([root / e["file"] for e in report["parity_images"]["manifest"]], root, source.spec).pixels
    plan = load_plan(out / "quant_plan.json")
    broken, spec, _ = apply_fault("shuffled_weight", model, source.spec, pixels)
    ctx = ExportContext(model=broken, weights=model.weights_info, preprocessing=spec, calibration_pixels=pixels,
                        out_dir=tmp_path, int8=True, quant_plan=plan, class_names=source.class_names,
                        progress=lambda message: None)
    (artifact,) = [a for a in export(ctx) if a.precision == "int8"]
    block, simulated = simulate_plan(model, plan, pixels, source.spec)
    result = gate_lowering(load(artifact.path).run(pixels), TorchRunner(model, source.spec).run(pixels),
                           block["simulation"], simulated)
    assert result["passed"] is False and not result["vs_simulation"]["passed"], result
    assert any(f.startswith("vs simulation") for f in result["gate"]["failures"])


def test_explain_gives_local_and_accumulated_loss_and_the_pooled_features(finetune, tmp_path, capsys):
    from spnas.cli.verify import main

    out, _, _, entry = finetune
    assert main([str(out / entry["path"]), "--explain", "--json", str(tmp_path / "v.json"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "local SQNR dB" in printed and "accumulated SQNR dB" in printed and "pooled features" in printed
    verified = json.loads((tmp_path / "v.json").read_text())
    layers = verified["artifacts"][0]["explain"]
    assert [layer["layer"] for layer in layers][:2] == ["conv_stem", "blocks.0.0.conv_dw"] and len(layers) == 65
    # the stem reads the (quantized) input itself, so its local loss is its accumulated loss; deeper layers add
    # less than everything before them has lost
    assert layers[0]["local_sqnr_db"] == pytest.approx(layers[0]["sqnr_db"], abs=1e-6)
    deeper = layers[5:-1]
    assert sum(layer["local_sqnr_db"] > layer["sqnr_db"] for layer in deeper) >= 0.9 * len(deeper), layers
    assert verified["int8_plan"]["simulation"]["pooled_sqnr_db"] == pytest.approx(
        json.loads((out / "report.json").read_text())["int8_plan"]["simulation"]["pooled_sqnr_db"], abs=1e-6)


def test_fallback_keeps_the_layers_that_add_the_most_loss(fixture_model, quant_plan, calib_pixels, parity_pixels,
                                                          monkeypatch):
    """One round against an unreachable pooled floor: the layers kept in float are the three of lowest local
    SQNR, and when they do not help the block says so in one line."""
    from spnas.folding import fold_batchnorm
    from spnas.gates import GateOverrides, plan_judge
    from spnas.preprocess import DEFAULT_SPEC, normalize
    from spnas.quantize import PixelBatches, fallback
    from spnas.quantize.drift import layer_drift

    monkeypatch.setattr(fallback, "MAX_ROUNDS", 1)
    folded, x = fold_batchnorm(fixture_model), normalize(parity_pixels[:8])
    lines = []
    plan, block = fallback.fallback(folded, quant_plan, PixelBatches(calib_pixels[:16]), DEFAULT_SPEC, x,
                                    plan_judge(GateOverrides(min_top1=0.0, min_pooled_sqnr_db=80.0)),
                                    progress=lines.append)
    drift = layer_drift(folded, quant_plan, x[:fallback.DRIFT_IMAGES])
    by_local = [layer["layer"] for layer in sorted(drift, key=lambda layer: layer["local_sqnr_db"])[:3]]
    assert block["rounds"][0]["added"] == by_local and not block["rounds"][0]["passed"]
    assert "plan: simulated pooled-feature SQNR" in block["first_attempt_simulated"]["gate"]["failures"][0]
    gains = [block["final_simulated"]["parity"][k] - block["first_attempt_simulated"]["parity"][k]
             for k in ("sqnr_db", "pooled_sqnr_db")]
    assert block["helped"] == (max(gains) >= fallback.HELPS_DB)
    if not block["helped"]:
        assert block["note"].startswith("no float layer helps") and lines[-1] == f"fallback: {block['note']}"
    assert np.isfinite(block["final_simulated"]["parity"]["pooled_sqnr_db"]) and plan.float_layers in ([], by_local)


def test_the_pairwise_gate_is_relative_and_the_fixed_floor_still_works():
    from spnas.gates import GateOverrides, int8_agreement

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(32, 4))
    plan = reference + 0.05 * rng.normal(size=reference.shape)  # ~26 dB from float, as a 4-class head gets
    first, second = plan + 0.01 * rng.normal(size=plan.shape), plan + 0.01 * rng.normal(size=plan.shape)
    relative = int8_agreement({"a": first, "b": second}, reference)
    (pair,) = relative["pairs"]
    assert relative["passed"] and 20 < pair["min_sqnr_db"] < pair["sqnr_db"] < 38  # the old fixed floor would fail
    assert not int8_agreement({"a": first, "b": second}, reference, GateOverrides(min_int8_agreement_db=38.0))["passed"]
    drifted = plan + 0.1 * rng.normal(size=plan.shape)  # one lowering left the plan
    assert not int8_agreement({"a": first, "b": drifted}, reference)["passed"]
