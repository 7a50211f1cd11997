"""The CPU-tier matrix: the CLI export's int8 artifacts on emulated CPUs (qemu-user), against the native run.

The end-to-end tests prepare (or reuse) the cached environment in ``$SPNAS_CACHE`` /
``~/.cache/spnas`` and run the session's ``cli_exports`` artifacts on 4 parity images: ONNX and
TFLite on the AVX2-only ``haswell`` tier and on ``cortex-a76``; ExecuTorch on ``haswell`` is
``slow`` (importing torch under emulation alone costs about a minute of CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spnas.arm64 import tiers as cpu_tiers
from spnas.errors import SpnasError
from spnas.parity import Thresholds

IMAGES = 4


def test_unknown_tier_is_one_line():
    assert cpu_tiers.parse_tiers("haswell, cortex-a76,haswell") == ["haswell", "cortex-a76"]
    with pytest.raises(SpnasError, match=r"unknown tier cortex-x4; choose from haswell, cortex-a53") as error:
        cpu_tiers.parse_tiers("haswell,cortex-x4")
    assert "\n" not in str(error.value)


def test_int8_tier_gate_holds_the_native_run_and_the_simulation():
    native = {"vs_reference": {"sqnr_db": 40.3}, "simulation_vs_reference_sqnr_db": 40.5}
    run = {"vs_reference": {"sqnr_db": 33.3, "top1_agreement": 1.0, "max_rel_error": 0.01}}
    failures = cpu_tiers.tier_failures(run, native, "int8", Thresholds(min_sqnr_db=22))
    assert len(failures) == 2 and "native run" in failures[0] and "simulation" in failures[1]
    run["vs_reference"]["sqnr_db"] = 39.8
    assert cpu_tiers.tier_failures(run, native, "int8", Thresholds(min_sqnr_db=22)) == []
    assert cpu_tiers.tier_failures(run, {"vs_reference": {"sqnr_db": 45.0}}, "fp32", Thresholds()) == []


def cli_pixels_and_reference(cli_exports, fixture_model):
    """The export's own parity images (report.json) and their PyTorch logits."""
    from spnas.images import load_images
    from spnas.reference import TorchRunner
    from spnas.report import read_report

    report = read_report(cli_exports / "report.json")
    root = Path(report["parity_images"]["source"])
    paths = [root / entry["file"] for entry in report["parity_images"]["manifest"][:IMAGES]]
    pixels = load_images(paths, root).pixels
    return pixels, TorchRunner(fixture_model).run(pixels)


def plan_simulations(cli_exports, fixture_model, pixels, names):
    from spnas.folding import fold_batchnorm
    from spnas.preprocess import DEFAULT_SPEC, normalize
    from spnas.quantize import load_plan, simulate

    simulated = simulate(fold_batchnorm(fixture_model), load_plan(cli_exports / "quant_plan.json"),
                         normalize(pixels, DEFAULT_SPEC))
    return {str((cli_exports / name).resolve()): simulated for name in names}


@pytest.mark.arm64
def test_onnx_and_tflite_int8_on_avx2_and_cortex_a76(cli_exports, fixture_model):
    """The shipped (portable) ONNX int8 and the TFLite int8 compute the same logits on an AVX2-only x86
    and on an Armv8.2 core as natively (bit-exact), within 1 dB of the plan's simulation."""
    names = ["spnasnet_100_int8.onnx", "spnasnet_100_int8.tflite"]
    pixels, reference = cli_pixels_and_reference(cli_exports, fixture_model)
    messages = []
    blocks = cpu_tiers.verify_tiers([cli_exports / name for name in names], pixels, reference,
                                    ["haswell", "cortex-a76"],
                                    simulations=plan_simulations(cli_exports, fixture_model, pixels, names),
                                    max_images=IMAGES, progress=messages.append)
    json.dumps(blocks)  # goes into the verify JSON as is
    for name in names:
        block = blocks[str((cli_exports / name).resolve())]
        assert block["passed"], block["failures"]
        assert block["n_images"] == IMAGES and [run["tier"] for run in block["tiers"]] == ["haswell", "cortex-a76"]
        for run in block["tiers"]:
            assert run["vs_native"]["bit_exact"], (name, run["tier"], run["vs_native"])
            assert abs(run["vs_simulation_sqnr_db"] - block["native"]["vs_simulation_sqnr_db"]) < 1e-9
        assert block["environment"]["guests"]["cortex-a76"]["machine"] == "aarch64"
        assert block["environment"]["guests"]["haswell"]["machine"] == "x86_64"
    onnx_runs = blocks[str((cli_exports / names[0]).resolve())]["tiers"]
    assert onnx_runs[1]["runtime"]["onnxruntime"] == onnx_runs[0]["runtime"]["onnxruntime"]
    assert any(message.startswith("cpu tiers: haswell") for message in messages)
    table = cpu_tiers.summary_table(blocks)
    assert table.count("haswell") == 2 and "FAILED" not in table


@pytest.mark.slow
def test_executorch_int8_on_avx2_and_skipped_on_arm(cli_exports, fixture_model):
    pixels, reference = cli_pixels_and_reference(cli_exports, fixture_model)
    pte = cli_exports / "spnasnet_100_int8.pte"
    block = cpu_tiers.verify_tiers([pte], pixels, reference, ["haswell", "cortex-a53"], max_images=2)[
        str(pte.resolve())]
    haswell, arm = block["tiers"]
    assert haswell["runtime"]["executorch"] and haswell["vs_native"]["bit_exact"]  # as measured for #25
    assert block["passed"], block["failures"]
    assert "CUDA" in arm["skipped"]
