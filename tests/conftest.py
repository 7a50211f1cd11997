"""Shared test fixtures: the shared data folder, the trained fixture weights, image sets.

Shared data is found through ``$SPNAS_SHARED_DATA`` or ``../shared/data``. Outside CI a
missing file skips the tests that need it; in CI (``CI=true``) it is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_path(relative: str) -> Path:
    base = Path(os.environ.get("SPNAS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    path = base / relative
    if not path.exists():
        unavailable(f"shared data missing: {path} (set SPNAS_SHARED_DATA or provide ../shared/data)")
    return path


def unavailable(message: str):
    """Something the tests need is not on this machine: a failure in CI (``CI=true``), a skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kotlin_core_jar() -> Path:
    """The Android app's ``core/`` Kotlin, its JVM tests and ``PreprocessMain``, compiled once per source
    state by the pinned Kotlin compiler (``android_demo/jvm/build.sh``; ``make android-tools`` installs it)."""
    import subprocess

    result = subprocess.run(["bash", str(ROOT / "android_demo" / "jvm" / "build.sh")], capture_output=True,
                            text=True, timeout=900)
    if result.returncode == 2:  # the compiler, JUnit or Java is not installed
        unavailable(result.stderr.strip())
    assert result.returncode == 0, f"the Kotlin build failed:\n{result.stderr}"
    return Path(result.stdout.strip())


@pytest.fixture(scope="session")
def imagenet_dir() -> Path:
    return shared_path("imagenet-sample")


@pytest.fixture(scope="session")
def labels_csv(imagenet_dir) -> Path:
    return shared_path("imagenet-sample/labels.csv")


@pytest.fixture(scope="session")
def fixture_weights() -> Path:
    """Trained (not ImageNet-accurate) spnasnet_100 weights in timm layout."""
    return shared_path("spnasnet_100_fixture.safetensors")


@pytest.fixture(scope="session")
def fixture_model(fixture_weights):
    import spnas

    return spnas.create_model(str(fixture_weights))


@pytest.fixture(scope="session")
def calib_pixels(labels_csv) -> np.ndarray:
    """uint8 crops of labels.csv rows 0-63: calibration, disjoint from ``parity_pixels``."""
    from spnas.images import labelled_rows

    return labelled_rows(labels_csv, 0, 64).pixels


@pytest.fixture(scope="session")
def parity_pixels(labels_csv) -> np.ndarray:
    """uint8 crops of labels.csv rows 600-639: held-out parity images."""
    from spnas.images import labelled_rows

    return labelled_rows(labels_csv, 600, 640).pixels


@pytest.fixture(scope="session")
def reference_logits(fixture_model, parity_pixels) -> np.ndarray:
    from spnas.reference import TorchRunner

    return TorchRunner(fixture_model).run(parity_pixels)


@pytest.fixture(scope="session")
def quant_plan(cli_exports):
    """The int8 plan of the fixture weights that the session's ``spnas-export --format all --int8`` wrote (128
    calibration images of its seeded split: the fewest its activation equalization takes), shared by every
    format's int8 fixture: computing a plan takes longer than lowering it, and this one is computed anyway."""
    from spnas.quantize import load_plan

    return load_plan(cli_exports / "quant_plan.json")


@pytest.fixture(scope="session")
def tflite_artifacts(fixture_model, calib_pixels, quant_plan, tmp_path_factory) -> dict:
    """fp32, fp16 and int8 TFLite exports of the fixture weights, shared by every test that needs one."""
    from spnas.export import ExportContext
    from spnas.export.options import FormatOptions
    from spnas.export.tflite import export
    from spnas.preprocess import DEFAULT_SPEC

    ctx = ExportContext(model=fixture_model, weights=fixture_model.weights_info, preprocessing=DEFAULT_SPEC,
                        calibration_pixels=calib_pixels, out_dir=tmp_path_factory.mktemp("tflite"), int8=True,
                        options=FormatOptions.of(fp16=True), quant_plan=quant_plan, progress=lambda message: None)
    return {artifact.precision: artifact for artifact in export(ctx)}


@pytest.fixture(scope="session")
def cli_exports(tmp_path_factory, fixture_weights, imagenet_dir) -> Path:
    """``spnas-export --format all --int8 --app mediapipe --coreml-ep --quiet`` on the fixture weights and real
    images, once per session (its printed tables in ``stdout.txt`` beside the folder, its stderr in ``stderr.txt``).

    Shared by the gate tests and every format test that needs an artifact as the CLI writes it
    (ExecuTorch's export is ~30 s, so its tests reuse this run instead of exporting again).
    """
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("cli_exports") / "exports"
    command = [sys.executable, "-m", "spnas.cli.export", "--format", "all", "--int8", "--weights",
               str(fixture_weights), "--calib", str(imagenet_dir), "--num-calib", "128", "--num-parity", "20",
               "--app", "mediapipe", "--coreml-ep", "--out", str(out), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    (out.parent / "stdout.txt").write_text(result.stdout)  # the tables, for tests of what the CLI prints
    (out.parent / "stderr.txt").write_text(result.stderr)
    return out


FINETUNE_NAMES = ["dog", "bird", "object", "other"]
FINETUNE_CFG = {"input_size": [3, 160, 160], "interpolation": "bicubic", "crop_pct": 0.9, "mean": [0.5] * 3,
                "std": [0.5] * 3}


@pytest.fixture(scope="session")
def finetune_export(tmp_path_factory, fixture_weights, imagenet_dir) -> tuple[Path, Path]:
    """``(export folder, timm folder)``: a user's 4-class fine-tune at 160 px, bicubic, mean/std 0.5, every layer
    trained a few SGD steps (``tests/finetunes.py``), exported by ``spnas-export --format tflite --int8`` with
    default gates, once per session."""
    from finetunes import train_all_layers, write_timm_folder

    from spnas.cli.export import main

    state = train_all_layers(fixture_weights, imagenet_dir, FINETUNE_NAMES, FINETUNE_CFG, steps=3, batch=8)
    folder = write_timm_folder(tmp_path_factory.mktemp("finetune") / "trained4", state, names=FINETUNE_NAMES,
                               cfg=FINETUNE_CFG)
    out = tmp_path_factory.mktemp("finetune-export") / "exports"
    code = main(["--format", "tflite", "--int8", "--weights", str(folder), "--calib", str(imagenet_dir),
                 "--num-calib", "32", "--num-parity", "24", "--out", str(out), "--quiet"])
    assert code == 0, (out / "report.json").read_text() if (out / "report.json").exists() else code
    return out, folder
