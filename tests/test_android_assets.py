"""Android demo assets: synced from a real int8 export, complete, and reproducible on the host.

The app's preprocessing is re-implemented here the way the Kotlin code computes it (Pillow's
fixed-point resampler transcribed, then a 3 x 256 lookup table for normalise + quantize) and must
match the host pipeline with tolerance 0: both sides are integer arithmetic plus float32 ops in the
same order, so any difference is a bug, not rounding noise.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from spnas import android, classes
from spnas.errors import SpnasError
from spnas.preprocess import DEFAULT_SPEC, load_pixels

PRECISION_BITS = 22


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


# ------------------------------------------------ the app's preprocessing, as the Kotlin code computes it


def triangle(x: float) -> float:
    return max(0.0, 1.0 - abs(x))


def bicubic(x: float) -> float:
    """``ResampleFilter.BICUBIC`` (Pillow's ``bicubic_filter``, a = -0.5), in the same arithmetic order."""
    a, d = -0.5, abs(x)
    if d < 1.0:
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1
    return (((d - 5) * d + 8) * d - 4) * a if d < 2.0 else 0.0


FILTERS = {"bilinear": (1.0, triangle), "bicubic": (2.0, bicubic)}


def coefficients(in_size: int, out_size: int, interpolation: str = "bilinear"):
    """``ImageOps.coefficients``: first tap, tap count and 22-bit fixed-point weights per output index."""
    filter_support, kernel_of = FILTERS[interpolation]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = filter_support * filter_scale
    kernel = math.ceil(support) * 2 + 1
    first, count, weights = [], [], np.zeros((out_size, kernel), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        raw = [kernel_of((x + xmin - center + 0.5) * (1.0 / filter_scale)) for x in range(xmax)]
        total = sum(raw)
        for x, w in enumerate(raw):
            w = w / total if total != 0.0 else w
            weights[xx, x] = int(-0.5 + w * (1 << PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << PRECISION_BITS))
        first.append(xmin)
        count.append(xmax)
    return first, count, weights


def clip8(sums: np.ndarray) -> np.ndarray:
    return np.where(sums >= 1 << 30, 255, np.where(sums <= 0, 0, sums >> PRECISION_BITS)).astype(np.uint8)


def resample_axis(pixels: np.ndarray, out_size: int, axis: int, interpolation: str = "bilinear") -> np.ndarray:
    """One pass of ``ImageOps.resize`` along ``axis`` (1: horizontal, 0: vertical)."""
    first, count, weights = coefficients(pixels.shape[axis], out_size, interpolation)
    source = np.moveaxis(pixels.astype(np.int64), axis, 0)
    out = np.empty((out_size, *source.shape[1:]), np.uint8)
    for index in range(out_size):
        taps = source[first[index]:first[index] + count[index]]
        sums = (1 << (PRECISION_BITS - 1)) + np.tensordot(weights[index, :count[index]], taps, axes=(0, 0))
        out[index] = clip8(sums)
    return np.moveaxis(out, 0, axis)


def app_resize(pixels: np.ndarray, width: int, height: int, interpolation: str = "bilinear") -> np.ndarray:
    if width != pixels.shape[1]:
        pixels = resample_axis(pixels, width, 1, interpolation)
    if height != pixels.shape[0]:
        pixels = resample_axis(pixels, height, 0, interpolation)
    return pixels


def app_resize_and_crop(pixels: np.ndarray, spec=DEFAULT_SPEC) -> np.ndarray:
    """``ImageOps.resizeAndCrop``: short side to ``resize_size`` (long side truncated), crop offsets half-even."""
    height, width = pixels.shape[:2]
    short, long = min(width, height), max(width, height)
    new_long = int(spec.resize_size * long / short)
    new_width, new_height = (spec.resize_size, new_long) if width <= height else (new_long, spec.resize_size)
    resized = app_resize(pixels, new_width, new_height, spec.interpolation)
    top = int(np.rint((new_height - spec.input_size) / 2.0))
    left = int(np.rint((new_width - spec.input_size) / 2.0))
    return resized[top:top + spec.input_size, left:left + spec.input_size]


def app_encode(crop: np.ndarray, preprocessing: dict) -> bytes:
    """``InputEncoder.encode``: a per-channel table of the 256 pixel values, in float32."""
    spec, tensor = preprocessing["preprocessing"], preprocessing["input"]
    if tensor["mode"] == "pixels":
        return crop.tobytes()
    pixel = np.arange(256, dtype=np.float32)
    tables = []
    for channel in range(3):
        values = (pixel / np.float32(spec["pixel_divisor"]) - np.float32(spec["mean"][channel])) \
            / np.float32(spec["std"][channel])
        if tensor["dtype"] == "float32":
            tables.append(values.astype("<f4"))
            continue
        low, high = (-128, 127) if tensor["dtype"] == "int8" else (0, 255)
        quantized = np.rint((values / np.float32(tensor["scale"])).astype(np.float64)).astype(np.int64)
        tables.append(np.clip(quantized + tensor["zero_point"], low, high).astype(tensor["dtype"]))
    return np.stack([tables[c][crop[..., c]] for c in range(3)], axis=-1).tobytes()


def decode_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


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


def test_app_preprocessing_reproduces_the_golden_input_exactly(assets, preprocessing):
    """Tolerance 0: the Kotlin pipeline is the host's integer resampler and float32 arithmetic, op for op."""
    crop = app_resize_and_crop(decode_png(assets / android.SAMPLE_FILE))
    assert crop.tobytes() == (assets / android.CROP_FILE).read_bytes()
    assert app_encode(crop, preprocessing) == (assets / android.INPUT_FILE).read_bytes()


@pytest.mark.parametrize("size", [(97, 61), (256, 300), (341, 256), (700, 467), (1000, 999)])
def test_app_resize_is_pillow_bilinear_on_real_photos(labels_csv, size):
    """Up- and downscaling, odd factors, one axis or both: the transcribed resampler equals Pillow's."""
    from PIL import Image

    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))[640:643]
    for row in rows:
        with Image.open(labels_csv.parent / row["file"]) as image:
            image = image.convert("RGB")
        expected = np.asarray(image.resize(size, Image.BILINEAR))
        np.testing.assert_array_equal(app_resize(np.asarray(image), *size), expected)
        source = np.asarray(image.resize(size, Image.BICUBIC))  # a photo of that size, through the whole crop
        np.testing.assert_array_equal(app_resize_and_crop(source), host_crop(source))


def host_crop(pixels: np.ndarray, spec=DEFAULT_SPEC) -> np.ndarray:
    from PIL import Image

    from spnas.preprocess import resize_and_crop

    return resize_and_crop(Image.fromarray(pixels), spec)


@pytest.mark.parametrize("grow", [(40, 30), (0, -40), (-50, 0), (300, 200)])
def test_app_bicubic_resize_is_pillow_bicubic_on_real_photos(labels_csv, grow):
    """Tolerance 0 for bicubic too (negative lobes, clipping at 0 and 255), alone and through a 192 px crop.

    Pillow 13 runs the vertical pass first for some two-axis reductions (its C code before it did not); the
    transcription runs Pillow's horizontal-first order, so these sizes change one axis or enlarge both.
    """
    import dataclasses

    from PIL import Image

    spec = dataclasses.replace(DEFAULT_SPEC, input_size=192, interpolation="bicubic", crop_pct=0.9)
    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))[643:645]
    for row in rows:
        with Image.open(labels_csv.parent / row["file"]) as image:
            image = image.convert("RGB")
        size = (image.width + grow[0], image.height + grow[1])
        expected = np.asarray(image.resize(size, Image.BICUBIC))
        np.testing.assert_array_equal(app_resize(np.asarray(image), *size, "bicubic"), expected)
        small = np.asarray(image.resize((150, 120), Image.BICUBIC))  # enlarged on both axes by the crop's resize
        np.testing.assert_array_equal(app_resize_and_crop(small, spec), host_crop(small, spec))


def test_app_encoder_matches_the_exporters_runner_on_parity_images(assets, preprocessing, parity_pixels):
    from spnas.export import load_runner

    runner = load_runner(assets / android.MODEL_FILE)
    for crop in parity_pixels[:8]:
        assert app_encode(crop, preprocessing) == runner.prepare(crop[None]).tobytes()


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
    result = subprocess.run([sys.executable, "-m", "spnas.android", "--tflite", str(fake), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
