"""Android demo assets: synced from a real int8 export, complete, and reproducible on the host.

The app's own Kotlin (``core/``, compiled by the pinned Kotlin compiler, run through
``PreprocessMain``) must match the host pipeline with tolerance 0 on real photos: both sides are
integer arithmetic plus float32 ops in the same order, so any difference is a bug, not rounding
noise. Images reach the JVM as PNGs of the pixels Pillow decoded, because JPEG decoders differ.
The app's JVM unit tests run here too, on freshly synced assets.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spnas import android, classes
from spnas.errors import SpnasError
from spnas.intake import load_pixels
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def int8_tflite(tflite_artifacts):
    return tflite_artifacts["int8"].path


@pytest.fixture(scope="module")
def assets(tmp_path_factory, int8_tflite):
    out_dir = tmp_path_factory.mktemp("assets")
    android.sync_assets(int8_tflite, out_dir, DEFAULT_SPEC)
    return out_dir


@pytest.fixture(scope="module")
def preprocessing(assets):
    return json.loads((assets / android.PREPROCESSING_FILE).read_text())


@pytest.fixture(scope="module")
def golden(assets):
    return json.loads((assets / android.GOLDEN_FILE).read_text())


# ------------------------------------------ the app's preprocessing: its compiled Kotlin, run by PreprocessMain

APP_SOURCES = ROOT / "android_demo" / "app" / "src"
JUNIT_JAR = Path("/usr/share/java/junit4.jar")  # Debian's junit4 (make android-tools); finds hamcrest itself


def app_spec(preprocessing: dict, spec: PreprocessSpec, tensor: dict | None = None) -> dict:
    """``preprocessing.json`` for another spec (and input tensor), as ``spnas.android.sync_assets`` writes it."""
    tensor = {**preprocessing["input"], **(tensor or {}), "shape": [1, spec.input_size, spec.input_size, 3]}
    return {**preprocessing, "preprocessing": android.preprocessing_entry(spec), "input": tensor}


def run_app(jar: Path, preprocessing: dict, pngs: list[Path], out_dir: Path) -> list[tuple[bytes, bytes]]:
    """(crop, model input) bytes the app computes for each PNG: one ``PreprocessMain`` run for all of them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file = out_dir / "preprocessing.json"
    spec_file.write_text(json.dumps(preprocessing))
    command = ["java", "-cp", str(jar), "org.spnas.demo.core.PreprocessMain", "--spec", str(spec_file)]
    for i, png in enumerate(pngs):
        command += ["--image", str(png), "--out", str(out_dir / f"{i}.bin"), "--crop", str(out_dir / f"{i}.rgb")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [((out_dir / f"{i}.rgb").read_bytes(), (out_dir / f"{i}.bin").read_bytes()) for i in range(len(pngs))]


def host_input(crop: np.ndarray, preprocessing: dict) -> bytes:
    """The model input the host computes for a crop (``spnas.android.app_input``, little-endian)."""
    spec = PreprocessSpec.from_dict(preprocessing["preprocessing"])
    tensor = preprocessing["input"]
    values = android.app_input(crop, spec, tensor, tensor["mode"])
    return values.astype(values.dtype.newbyteorder("<")).tobytes()


def save_png(pixels: np.ndarray, path: Path, mode: str = "RGB") -> Path:
    """Pixels Pillow decoded, stored losslessly: the JVM reads the same values (JPEG decoders differ)."""
    from PIL import Image

    Image.fromarray(pixels).convert(mode).save(path, compress_level=1)
    return path


# Real photos (labels.csv rows 640-644) brought to these sizes by Pillow first: enlarged on both axes, one axis
# or none, reduced by odd factors, wide, and tall (aspect > 2: Pillow 13 runs its vertical pass first when it
# brings them to the crop's width, ImageOps.verticalFirst), each then resized and cropped by the app and host.
PHOTO_SIZES = [None, (97, 61), (256, 300), (341, 256), (700, 467), (720, 719), (300, 700), (270, 640), (900, 300)]


@pytest.fixture(scope="module")
def photo_pngs(labels_csv, tmp_path_factory) -> list[Path]:
    from PIL import Image

    out = tmp_path_factory.mktemp("photos")
    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))[640:645]
    pngs = []
    for row in rows:
        with Image.open(labels_csv.parent / row["file"]) as image:
            image = image.convert("RGB")
        for size in PHOTO_SIZES:
            resized = image if size is None else image.resize(size, Image.BICUBIC)
            name = f"{Path(row['file']).stem}_{resized.width}x{resized.height}.png"
            pngs.append(save_png(np.asarray(resized), out / name))
    return pngs


# ------------------------------------------------------------------------------------------------ tests


def test_assets_are_complete(assets, int8_tflite, preprocessing):
    for name in android.ASSET_FILES:
        assert (assets / name).is_file(), name
    model = (assets / android.MODEL_FILE).read_bytes()
    assert model == int8_tflite.read_bytes()
    assert preprocessing["model"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert preprocessing["model"]["precision"] == "int8"
    assert preprocessing["preprocessing"]["resize_size"] == 256 and preprocessing["preprocessing"]["input_size"] == 224


def test_json_records_the_quantization_the_interpreter_reports(assets, preprocessing):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(assets / android.MODEL_FILE))
    (tensor,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert preprocessing["input"]["dtype"] == np.dtype(tensor["dtype"]).name == "int8"
    assert (preprocessing["input"]["scale"], preprocessing["input"]["zero_point"]) == tensor["quantization"]
    assert (preprocessing["output"]["scale"], preprocessing["output"]["zero_point"]) == output["quantization"]
    assert preprocessing["input"]["mode"] == "normalized"
    assert preprocessing["input"]["shape"] == [1, 224, 224, 3] and preprocessing["output"]["shape"] == [1, 1000]


def test_model_loads_and_labels_have_1000_names(assets):
    from spnas.export import load_runner

    runner = load_runner(assets / android.MODEL_FILE)
    assert runner.run(np.zeros((1, 224, 224, 3), np.uint8)).shape == (1, 1000)
    labels = (assets / android.LABELS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(labels) == 1000
    assert labels == classes.CLASS_NAMES_PATH.read_text(encoding="utf-8").splitlines()


def test_class_names_match_the_labelled_imagenet_sample(labels_csv):
    names = classes.read_class_names()
    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 800
    mismatches = [(row["class_index"], row["name"]) for row in rows
                  if names[int(row["class_index"])].replace(" ", "_") != row["name"]]
    assert mismatches == []


def test_class_names_file_is_the_one_whose_provenance_is_recorded():
    recorded = (classes.CLASS_NAMES_PATH.parent / "IMAGENET_CLASSES.md").read_text()
    digest = re.search(r"output sha256 \| `([0-9a-f]{64})`", recorded).group(1)
    assert hashlib.sha256(classes.CLASS_NAMES_PATH.read_bytes()).hexdigest() == digest


def test_golden_crop_is_the_host_preprocessing_of_the_sample(assets, golden):
    crop = load_pixels(assets / android.SAMPLE_FILE)
    assert (assets / android.CROP_FILE).read_bytes() == crop.tobytes()
    assert golden["crop"]["sha256"] == hashlib.sha256(crop.tobytes()).hexdigest()
    assert (golden["image"]["width"], golden["image"]["height"]) == (578, 384)  # the app's resize really downscales


def test_golden_pair_reproduces_in_litert_on_the_host(assets, golden, preprocessing):
    from spnas.export import load_runner

    tensor = np.frombuffer((assets / android.INPUT_FILE).read_bytes(), np.int8).reshape(1, 224, 224, 3)
    logits = android.run_interpreter(assets / android.MODEL_FILE, tensor)
    np.testing.assert_array_equal(logits, np.float32(golden["logits"]))
    assert android.top_k(logits) == [entry["index"] for entry in golden["top5"]]
    # The host runner, fed the golden crop, prepares the same tensor and reaches the same logits.
    runner = load_runner(assets / android.MODEL_FILE)
    crop = np.frombuffer((assets / android.CROP_FILE).read_bytes(), np.uint8).reshape(1, 224, 224, 3)
    np.testing.assert_array_equal(runner.prepare(crop), tensor)
    np.testing.assert_array_equal(runner.run(crop)[0], logits)
    probabilities = android.softmax(logits)
    labels = (assets / android.LABELS_FILE).read_text().splitlines()
    for entry in golden["top5"]:
        assert entry["name"] == labels[entry["index"]]
        assert entry["probability"] == pytest.approx(probabilities[entry["index"]], rel=1e-12)
    assert 0 < golden["top5_tie_tolerance"] < golden["logit_tolerance"]


def test_kotlin_jvm_tests_pass_on_the_synced_assets(kotlin_core_jar, assets, capsys):
    """The app's JVM tests (app/src/test), compiled by the real Kotlin compiler, on freshly synced assets."""
    tests = sorted(APP_SOURCES.glob("test/java/**/*Test.kt"))
    classes = [".".join(path.relative_to(APP_SOURCES / "test" / "java").with_suffix("").parts) for path in tests]
    declared = sum(path.read_text().count("@Test ") + path.read_text().count("@Test\n") for path in tests)
    result = subprocess.run(
        ["java", f"-Dspnas.assets={assets}",
         f"-Dspnas.benchExample={ROOT / 'tests' / 'data' / 'android_app' / 'spnas-bench-android.json'}",
         "-cp", f"{kotlin_core_jar}{os.pathsep}{JUNIT_JAR}", "org.junit.runner.JUnitCore", *classes],
        capture_output=True, text=True, timeout=300)
    summary = re.search(r"^OK \((\d+) tests\)$", result.stdout, re.MULTILINE)
    with capsys.disabled():
        print(f"\nKotlin JVM tests (JUnitCore, {len(classes)} classes): "
              f"{summary.group(0) if summary else result.stdout.strip().splitlines()[-1]}")
    assert result.returncode == 0 and summary, result.stdout + result.stderr
    assert int(summary.group(1)) == declared > 30


def test_app_preprocessing_reproduces_the_golden_input_exactly(kotlin_core_jar, assets, preprocessing, tmp_path):
    """Tolerance 0: the compiled Kotlin, fed the golden PNG, writes the golden crop and model input."""
    ((crop, tensor),) = run_app(kotlin_core_jar, preprocessing, [assets / android.SAMPLE_FILE], tmp_path)
    assert crop == (assets / android.CROP_FILE).read_bytes()
    assert tensor == (assets / android.INPUT_FILE).read_bytes()


@pytest.mark.parametrize("case", ["bilinear-int8", "bicubic-float32", "bilinear-uint8"])
def test_app_preprocessing_is_the_hosts_on_real_photos(case, kotlin_core_jar, assets, preprocessing, photo_pngs,
                                                       tmp_path):
    """Tolerance 0 for the uint8 crop and the model input bytes, on every photo size of ``PHOTO_SIZES``.

    bilinear-int8: the synced int8 model's spec; its input is what the exporter's runner feeds the model.
    bicubic-float32: a 192 px bicubic crop (crop_pct 0.9: negative lobes, clipping at 0 and 255), float32 input.
    bilinear-uint8: another normalisation quantized to a uint8 input (mean = std = 0.5, zero point 128).
    """
    import dataclasses

    from spnas.export import load_runner

    spec, tensor, prepare = DEFAULT_SPEC, None, None
    if case == "bilinear-int8":
        runner = load_runner(assets / android.MODEL_FILE)
        prepare = lambda crop: runner.prepare(crop[None]).tobytes()  # noqa: E731
    elif case == "bicubic-float32":
        spec = dataclasses.replace(DEFAULT_SPEC, input_size=192, interpolation="bicubic", crop_pct=0.9)
        tensor = {"dtype": "float32", "scale": 0.0, "zero_point": 0}
    else:
        spec = dataclasses.replace(DEFAULT_SPEC, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        tensor = {"dtype": "uint8", "scale": 0.0078125, "zero_point": 128}
    document = app_spec(preprocessing, spec, tensor)
    prepare = prepare or (lambda crop: host_input(crop, document))
    for png, (crop, model_input) in zip(photo_pngs, run_app(kotlin_core_jar, document, photo_pngs, tmp_path),
                                        strict=True):
        expected = load_pixels(png, spec)
        assert crop == expected.tobytes(), f"crop of {png.name}"
        assert model_input == prepare(expected), f"model input of {png.name}"


def test_app_encoder_matches_the_exporters_runner_on_parity_images(kotlin_core_jar, assets, preprocessing,
                                                                   parity_pixels, tmp_path):
    """224 px crops through a crop_pct 1.0 spec (no resize, whole-image crop): the app's encoder alone."""
    import dataclasses

    from spnas.export import load_runner

    runner = load_runner(assets / android.MODEL_FILE)
    document = app_spec(preprocessing, dataclasses.replace(DEFAULT_SPEC, crop_pct=1.0))
    pngs = [save_png(crop, tmp_path / f"parity{i}.png") for i, crop in enumerate(parity_pixels[:8])]
    for crop, (app_crop, model_input) in zip(parity_pixels, run_app(kotlin_core_jar, document, pngs, tmp_path),
                                             strict=False):
        assert app_crop == crop.tobytes()
        assert model_input == runner.prepare(crop[None]).tobytes()


def test_app_decodes_grey_palette_and_alpha_pngs_as_pillow_does(kotlin_core_jar, preprocessing, photo_pngs,
                                                                tmp_path):
    """ImageIO's raster samples, not its colour-converted getRGB: grey stays grey, alpha is dropped unmixed."""
    from PIL import Image

    with Image.open(photo_pngs[0]) as image:
        pixels = np.asarray(image)
    alpha = np.asarray(Image.fromarray(pixels).convert("RGBA")).copy()
    alpha[..., 3] = np.arange(alpha.shape[1], dtype=np.uint8)[None, :]
    pngs = [save_png(pixels, tmp_path / f"{mode}.png", mode) for mode in ("L", "LA", "P")]
    pngs.append(save_png(alpha, tmp_path / "RGBA.png", "RGBA"))
    for png, (crop, _) in zip(pngs, run_app(kotlin_core_jar, preprocessing, pngs, tmp_path), strict=True):
        assert crop == load_pixels(png).tobytes(), png.name


def test_preprocess_main_refuses_bad_input_in_one_line(kotlin_core_jar, assets, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a PNG")
    command = ["java", "-cp", str(kotlin_core_jar), "org.spnas.demo.core.PreprocessMain",
               "--spec", str(assets / android.PREPROCESSING_FILE),
               "--image", str(assets / android.SAMPLE_FILE), "--out", str(out / "good.bin"),
               "--image", str(not_an_image), "--out", str(out / "bad.bin")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {not_an_image}: not an image ImageIO can decode"
    assert list(out.iterdir()) == []  # the good image's output is not written either


def test_input_mode_detection():
    crop = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    raw_uint8 = {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
    assert android.detect_input_mode(crop[None], crop, DEFAULT_SPEC, raw_uint8) == "pixels"
    int8 = {"dtype": "int8", "scale": 0.0186, "zero_point": -14}
    prepared = android.app_input(crop, DEFAULT_SPEC, int8, "normalized")
    assert android.detect_input_mode(prepared, crop, DEFAULT_SPEC, int8) == "normalized"
    with pytest.raises(SpnasError, match="neither app transform"):
        android.detect_input_mode(prepared // 2, crop, DEFAULT_SPEC, int8)


def test_bad_model_paths_are_one_line_errors(tmp_path):
    with pytest.raises(SpnasError, match="not a .tflite file"):
        android.sync_assets(tmp_path / "missing.tflite", tmp_path / "out")
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"not a flatbuffer")
    with pytest.raises(SpnasError, match="not a loadable .tflite model"):
        android.sync_assets(fake, tmp_path / "out")
    result = subprocess.run([sys.executable, "-m", "spnas.cli.android", "--tflite", str(fake), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
