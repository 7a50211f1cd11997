"""``spnas-export --int8 --fallback auto``: float layers chosen on the plan's int8 simulation, lowered once.

Real exporter and runtime on the fixture weights.  With 32 calibration and 20 parity images of the
CLI's seeded split, the plan's simulation measures 38.6 dB logit SQNR (2026-12-06, Intel Xeon), so a
38.8 dB floor fails the plan; keeping the layers of lowest local SQNR in float passes it within the
three rounds (2026-12-07, AMD EPYC).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

SQNR_FLOOR_DB = 38.8


@pytest.fixture(scope="module")
def fallback_export(fixture_weights, imagenet_dir, tmp_path_factory):
    from spnas.cli.export import main

    out = tmp_path_factory.mktemp("fallback")
    code = main(["--format", "tflite", "--int8", "--weights", str(fixture_weights), "--calib", str(imagenet_dir),
                 "--num-calib", "32", "--num-parity", "20", "--min-sqnr-db", str(SQNR_FLOOR_DB),
                 "--fallback", "auto", "--out", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    entry = next(a for a in report["artifacts"] if a["precision"] == "int8")
    return code, out, entry


def test_fallback_keeps_layers_in_float_until_the_simulated_gate_passes(fallback_export):
    _, out, entry = fallback_export
    block = entry["fallback"]
    first, final = block["first_attempt_simulated"], block["final_simulated"]
    assert first["gate"]["status"] == "failed" and first["parity"]["sqnr_db"] < SQNR_FLOOR_DB
    assert final["gate"]["status"] == "passed" and final["parity"]["sqnr_db"] >= SQNR_FLOOR_DB
    assert block["rounds"][-1]["passed"] and not any(r["passed"] for r in block["rounds"][:-1])
    assert block["float_layers"] and len(block["float_layers"]) == 3 * len(block["rounds"])
    assert all(name == "conv_stem" or name.startswith("blocks.") or name in ("conv_head", "classifier")
               for name in block["float_layers"])
    assert entry["details"]["quantization"]["float_layers"] == block["float_layers"]
    # the artifact lowers that plan: its runtime lands where the simulation said (within 1 dB)
    assert abs(entry["parity"]["sqnr_db"] - final["parity"]["sqnr_db"]) < 1.0


def test_kept_layers_are_float_ops_in_the_written_artifact(fallback_export):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from spnas.export.tflite import _layer_outputs

    _, out, entry = fallback_export
    interpreter = Interpreter(model_path=str(out / entry["path"]),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    outputs = _layer_outputs(interpreter, {"conv_stem", "conv_head", *(f"blocks.{s}.{b}.{c}" for s in range(7)
                                                                        for b in range(4)
                                                                        for c in ("conv_pw", "conv_dw", "conv_pwl"))})
    dtypes = {name: np.dtype(detail["dtype"]).name for name, detail in outputs.items()}
    kept = set(entry["fallback"]["float_layers"])
    assert {dtypes[name] for name in kept} == {"float32"}
    assert {dtype for name, dtype in dtypes.items() if name not in kept} == {"int8"}
    assert len(dtypes) == 65


def test_no_fallback_leftovers_in_the_output_folder(fallback_export):
    _, out, entry = fallback_export
    assert sorted(p.name for p in out.iterdir()) == ["quant_plan.json", "report.json", "spnasnet_100_fp32.tflite",
                                                     "spnasnet_100_int8.tflite"]
    plan = json.loads((out / "quant_plan.json").read_text())
    assert plan["float_layers"] == entry["fallback"]["float_layers"]


def test_worst_layers_ranks_by_local_loss_and_skips_kept():
    from spnas.quantize.fallback import worst_layers

    drift = [{"layer": "conv_stem", "sqnr_db": 45.0, "local_sqnr_db": 45.0},
             {"layer": "a", "sqnr_db": 30.0, "local_sqnr_db": 31.0},  # adds the most
             {"layer": "b", "sqnr_db": 25.0, "local_sqnr_db": 40.0},  # worst accumulated, but inherited
             {"layer": "c", "sqnr_db": 27.0, "local_sqnr_db": 33.0}]
    assert worst_layers(drift, [], 2) == ["a", "c"]
    assert worst_layers(drift, ["a"], 3) == ["c", "b", "conv_stem"]
