"""The parsers spnas points at outside input, each as a function of raw bytes that states its contract.

A target returns normally for any input: the parser either accepts the input (and its result has
the promised shape) or refuses it with the one error type the CLIs turn into one line. Any other
exception, or a result of the wrong shape, is a bug. ``tests/test_fuzz.py`` runs these under
hypothesis with a small budget; ``benchmarks/fuzz.py`` runs them coverage-guided (atheris) for
minutes, seeded with ``seeds(name)``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

ADB_RECORDINGS = Path(__file__).parent / "data" / "adb"
FOUND = Path(__file__).parent / "data" / "fuzz"  # inputs fuzzing found to break a contract, kept as seeds


def adb_output(data: bytes) -> None:
    """``benchmark_model`` output as adb returns it (any version, any garbage)."""
    from spnas.bench.adb import BenchmarkOutputError, parse_benchmark_output

    try:
        record = parse_benchmark_output(data.decode("utf-8", errors="replace"))
    except BenchmarkOutputError as exc:
        assert "\n" not in str(exc), "an error must be one line"
        return
    latency = record["latency_ms"]
    assert set(latency) >= {"n_runs", "mean", "median", "min", "max"}
    for key, value in latency.items():
        assert value is None or isinstance(value, (int, float)), (key, value)
    assert latency.get("mean") is not None or latency.get("median") is not None


def report_json(data: bytes) -> None:
    """A ``report.json`` beside an artifact, edited by hand or written by another version."""
    from spnas.errors import SpnasError
    from spnas.report import parse_report

    try:
        report = parse_report(data.decode("utf-8", errors="replace"))
    except SpnasError as exc:
        assert "\n" not in str(exc), "an error must be one line"
        return
    for section in ("calibration", "parity_images"):  # what spnas-verify reads next, without further checks
        root = Path(report[section]["source"])
        for entry in report[section]["manifest"]:
            assert (root / entry["file"]).resolve().is_relative_to(root.resolve())
    assert isinstance(report["weights"]["source"], str) and isinstance(report["artifacts"], list)


def image_file(data: bytes) -> None:
    """One file in a calibration or validation folder: a crop of the net's input size, or a one-line skip."""
    from spnas.intake import UnusableImage, load_pixels
    from spnas.preprocess import DEFAULT_SPEC

    handle, name = tempfile.mkstemp(suffix=".img")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        try:
            crop = load_pixels(name, DEFAULT_SPEC)
        except UnusableImage as exc:
            assert "\n" not in str(exc), "a skip warning must be one line"
            return
    finally:
        os.unlink(name)
    size = DEFAULT_SPEC.input_size
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8


TARGETS = {"adb": adb_output, "report": report_json, "image": image_file}


def minimal_report() -> dict:
    """The smallest report spnas-verify accepts: the fields it reads, with plausible values."""
    manifest = [{"file": "a/cat.jpg", "sha256": "0" * 64}]
    images = {"n_images": 1, "source": "/data", "manifest": manifest}
    return {"spnas_version": "0.1.0", "weights": {"source": "model.safetensors", "sha256": "0" * 64},
            "preprocessing": {"input_size": 224}, "calibration": images, "parity_images": images, "artifacts": [],
            "warnings": []}


def seed_images() -> list[bytes]:
    """Small images in every format and mode the intake policy converts."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    variants = [(base, "JPEG"), (base, "PNG"), (base.convert("P"), "GIF"), (base, "WEBP"), (base.convert("L"), "PNG"),
                (base.convert("RGBA"), "PNG"), (base.convert("CMYK"), "JPEG"), (base, "BMP"), (base, "TIFF")]
    seeds = []
    for image, fmt in variants:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        seeds.append(buffer.getvalue())
    return seeds


def seeds(name: str) -> list[bytes]:
    """Valid inputs to start mutating from: recorded ``benchmark_model`` logs, a real report's shape, images."""
    found = [path.read_bytes() for path in sorted(FOUND.glob(f"{name}-*"))]
    if name == "adb":
        return [path.read_bytes() for path in sorted(ADB_RECORDINGS.glob("*.txt"))] + found
    if name == "report":
        report = minimal_report()
        return [json.dumps(report).encode(), json.dumps(report, indent=2).encode(),
                json.dumps({**report, "spnas_version": "0.2.0"}).encode()] + found
    if name == "image":
        return seed_images() + found
    raise KeyError(name)

