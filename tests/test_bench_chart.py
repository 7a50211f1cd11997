"""The cross-device chart: what is grouped with what (checked on the layout), and that a PNG is written."""

from __future__ import annotations

import pytest

from spnas.bench.chart import chart_layout, plot_latency, series_label


def record(artifact, fmt, precision, median, *, p90=None, device=None, threads=1, unit=None, status=None, **extra):
    latency = {"n_runs": 10, "mean": median, "median": median, "p90": p90, "min": median, "max": median, "std": 0.0}
    result = {"artifact": artifact, "format": fmt, "precision": precision, "threads": threads, "latency_ms": latency,
              **extra}
    if device:
        result["device_name"] = device
    if unit:
        result["compute_unit"] = unit
    if status:
        result["status"] = status
    return result


def mixed_records():
    """A host run at 1 and 2 threads, a two-phone fleet (one job failed) and an app run on the GPU."""
    return [
        record("spnasnet_100_fp32.tflite", "tflite", "fp32", 40.0, p90=44.0),
        record("spnasnet_100_int8.tflite", "tflite", "int8", 20.0, p90=21.0),
        record("spnasnet_100_fp32.onnx", "onnx", "fp32", 35.0),
        record("spnasnet_100_fp32.tflite", "tflite", "fp32", 22.0, threads=2),
        record("spnasnet_100_int8.tflite", "tflite", "int8", 11.0, threads=2),
        record("spnasnet_100_fp32.tflite", "tflite", "fp32", 9.0, device="Samsung Galaxy S24", threads=None,
               unit="cpu"),
        record("spnasnet_100_int8.tflite", "tflite", "int8", 1.5, device="Samsung Galaxy S24", threads=None,
               unit="cpu"),
        record("spnasnet_100_fp32.tflite", "tflite", "fp32", None, device="Google Pixel 8", threads=None, unit="cpu",
               status="failed"),
        record("spnasnet_100_int8.tflite", "tflite", "int8", 6.0, device="Google Pixel 8", threads=None, unit="cpu"),
        {**record("spnasnet_100_int8.tflite", "tflite", "int8", 7.5, device="Google Pixel 8 (app)", threads=4),
         "accelerator": "gpu"},
    ]


def test_one_group_per_format_and_precision_one_series_per_setting():
    layout = chart_layout(mixed_records())
    assert layout.groups == ["tflite fp32", "tflite int8", "onnx fp32"]
    assert layout.series == ["1 thread", "2 threads", "Samsung Galaxy S24 · cpu", "Google Pixel 8 · cpu",
                             "Google Pixel 8 (app) · 4 threads · gpu"]
    assert layout.values == [[40.0, 20.0, 35.0], [22.0, 11.0, None], [9.0, 1.5, None], [None, 6.0, None],
                             [None, 7.5, None]]
    assert layout.whiskers[0] == [44.0, 21.0, 35.0]  # p90, else max (here equal to the median)
    assert layout.failed[3] == [True, False, False] and not any(layout.failed[2])
    assert layout.log_scale  # 40 ms over 1.5 ms


def test_linear_axis_and_artifact_names_when_kinds_collide():
    records = [record("pytorch", "pytorch", "fp32", 30.0), record("pytorch (fixture)", "pytorch", "fp32", 31.0),
               record("spnasnet_100_fp32.onnx", "onnx", "fp32", 25.0)]
    layout = chart_layout(records)
    assert layout.groups == ["pytorch fp32\npytorch", "pytorch fp32\npytorch (fixture)",
                             "onnx fp32\nspnasnet_100_fp32.onnx"]
    assert layout.values == [[30.0, 31.0, 25.0]] and not layout.log_scale


@pytest.mark.parametrize(("extra", "label"), [
    ({}, "1 thread"),
    ({"device_name": "Xiaomi 14", "threads": 4}, "Xiaomi 14 · 4 threads"),
    ({"device_name": "Samsung Galaxy S24", "threads": None, "compute_unit": "npu"}, "Samsung Galaxy S24 · npu"),
])
def test_series_labels(extra, label):
    assert series_label({**record("a.tflite", "tflite", "int8", 1.0), **extra}) == label


def test_chart_is_written(tmp_path):
    png = tmp_path / "fleet.png"
    plot_latency(mixed_records(), png, "latency across devices")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
