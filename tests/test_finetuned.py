"""A user's own fine-tune in timm's layouts: class count, labels and preprocessing from its config.json.

The tests write their own timm folders (config.json + model.safetensors, as timm's ``save_for_hf``
does): the fixture backbone with a linear-probe head, at another input size, bicubic, mean/std 0.5.
The reference is computed by a hand-written timm eval transform that shares no code with
``spnas.preprocess``.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from finetunes import write_timm_folder
from PIL import Image
from safetensors.torch import save_file

import spnas
from spnas.cli.export import main as export_main
from spnas.errors import SpnasError

ODD_NAMES = ["dog", "bird", "other"]
ODD_CFG = {"input_size": [3, 192, 192], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": 3}


def timm_eval_crop(path, size: int, crop_pct: float, resample) -> np.ndarray:
    """timm's ``transforms_imagenet_eval`` written out by hand: RGB, torchvision Resize(short side), CenterCrop."""
    image = Image.open(path).convert("RGB")
    scale = math.floor(size / crop_pct)
    width, height = image.size
    new = (scale, int(scale * height / width)) if width <= height else (int(scale * width / height), scale)
    image = image.resize(new, resample)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def hand_normalize(crops: np.ndarray, mean, std) -> torch.Tensor:
    x = crops.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, fixture_weights, imagenet_dir):
    """A 3-class, 192 px, bicubic, mean/std 0.5 fine-tune: a ridge linear probe on the fixture's pooled features."""
    backbone = spnas.create_model(str(fixture_weights), num_classes=0)
    with open(imagenet_dir / "coarse8.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:48]
    crops = np.stack([timm_eval_crop(imagenet_dir / r["file"], 192, 0.9, Image.BICUBIC) for r in rows])
    with torch.no_grad():
        features = backbone(hand_normalize(crops, ODD_CFG["mean"], ODD_CFG["std"])).double()
    targets = torch.nn.functional.one_hot(torch.tensor(
        [ODD_NAMES.index(r["label"]) if r["label"] in ODD_NAMES else 2 for r in rows]), 3).double()
    design = torch.cat([features, torch.ones(len(rows), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.solve(design.T @ design + 1e-1 * torch.eye(design.shape[1], dtype=torch.float64),
                                  design.T @ targets)
    state = {**spnas.create_model(str(fixture_weights)).state_dict(),
             "classifier.weight": solution[:-1].T.float(), "classifier.bias": solution[-1].float()}
    return write_timm_folder(tmp_path_factory.mktemp("odd") / "my-finetune", state, names=ODD_NAMES, cfg=ODD_CFG)


@pytest.fixture(scope="module")
def odd_export(odd_folder, imagenet_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("odd-export") / "exports"
    code = export_main(["--format", "tflite", "--int8", "--weights", str(odd_folder), "--calib", str(imagenet_dir),
                        "--num-calib", "16", "--num-parity", "8", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_odd_config_artifacts_match_a_hand_written_timm_reference(odd_folder, odd_export, imagenet_dir):
    from spnas.export import load_runner
    from spnas.export.tflite_metadata import LABELS_FILE, associated_files
    from spnas.intake import load_pixels
    from spnas.parity import compare

    report = json.loads((odd_export / "report.json").read_text())
    assert report["classes"] == {"num_classes": 3, "source": "config.json label_names", "names": ODD_NAMES}
    spec = report["preprocessing"]
    assert (spec["input_size"], spec["interpolation"], spec["mean"], spec["std"]) == (192, "bicubic", [0.5] * 3,
                                                                                     [0.5] * 3)
    files = sorted(imagenet_dir.glob("*.jpg"))[600:604]
    crops = np.stack([timm_eval_crop(f, 192, 0.9, Image.BICUBIC) for f in files])
    runner = load_runner(odd_export / "spnasnet_100_fp32.tflite")
    assert all(np.array_equal(load_pixels(f, runner.spec), c) for f, c in zip(files, crops, strict=True))
    model = spnas.create_model(str(odd_folder))
    with torch.no_grad():
        reference = model(hand_normalize(crops, [0.5] * 3, [0.5] * 3)).numpy()
    for entry in report["artifacts"]:
        assert entry["passed"] is True, entry
        runner = load_runner(odd_export / entry["path"])
        assert runner.input["shape"].tolist() == [1, 192, 192, 3]
        metrics = compare(reference, runner.run(crops))
        if entry["precision"] == "fp32":
            assert metrics["max_rel_error"] < 1e-5
        else:
            assert metrics["top1_agreement"] == 1.0 and metrics["sqnr_db"] > 20
        labels = associated_files((odd_export / entry["path"]).read_bytes())[LABELS_FILE].decode().split()
        assert labels == ODD_NAMES


def test_odd_config_onnx_and_the_python_api_round_trip(odd_folder, imagenet_dir, tmp_path, capsys):
    """ONNX at 192 px with its class names; ``spnas.load(...).export(...)`` gives the CLI's report.json byte for
    byte, ``spnas.verify`` its --json, both as typed Reports."""
    import onnx

    import spnas.api
    from spnas.cli.verify import main as verify_main
    from spnas.report import ArtifactReport, Report

    out = tmp_path / "exports"
    assert export_main(["--format", "onnx", "--weights", str(odd_folder), "--calib", str(imagenet_dir),
                        "--num-calib", "4", "--num-parity", "4", "--out", str(out), "--quiet"]) == 0
    proto = onnx.load(str(out / "spnasnet_100_fp32.onnx"))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert dims == [1, 3, 192, 192] and json.loads(metadata["spnas.class_names"]) == ODD_NAMES
    model = spnas.load(odd_folder)
    assert model.class_names == ODD_NAMES and model.preprocessing.input_size == 192
    report = model.export("onnx", calib=imagenet_dir, num_calib=4, num_parity=4, out=tmp_path / "api", quiet=True)
    assert isinstance(report, Report) and isinstance(report.artifacts[0], ArtifactReport)
    assert report.passed and report.artifacts[0].passed is True and report.classes["names"] == ODD_NAMES
    assert report.to_json() == (out / "report.json").read_text() == (tmp_path / "api" / "report.json").read_text()
    artifact = out / "spnasnet_100_fp32.onnx"
    assert verify_main([str(artifact), "--json", str(tmp_path / "v.json"), "--quiet"]) == 0
    verified = spnas.verify(artifact, quiet=True)
    assert verified.kind == "verify" and verified.to_json() == (tmp_path / "v.json").read_text()
    with pytest.raises(SpnasError, match="unknown option 'num_calibration'"):
        model.export("onnx", num_calibration=4)
    with pytest.raises(SpnasError, match="give them to spnas.load"):
        model.export("onnx", input_size=160)
    with pytest.raises(SpnasError, match="not square"):
        spnas.load(odd_folder, input_size="192x160")
    with pytest.warns(DeprecationWarning, match="spnas.load"), pytest.raises(SpnasError, match="needs --int8"):
        spnas.api.export("onnx", weights=odd_folder, plan="quant_plan.json", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_overrides_are_recorded_and_generic_names_warned(fixture_weights, tmp_path):
    from spnas.source import resolve_source

    state = {**spnas.create_model(str(fixture_weights)).state_dict(), "classifier.weight": torch.zeros(10, 1280),
             "classifier.bias": torch.zeros(10)}
    save_file(state, tmp_path / "bare.safetensors")
    source = resolve_source(str(tmp_path / "bare.safetensors"),
                            overrides={"input_size": "256", "mean": "0.5,0.5,0.5", "interpolation": "bicubic"})
    assert source.checkpoint.num_classes == 10 and source.class_names[9] == "class_9"
    assert "pass --labels FILE" in source.warnings[0]
    assert source.spec.input_size == 256 and source.spec.resize_size == 292 and source.spec.mean == (0.5,) * 3
    assert source.overrides["input_size"] == {"config": 224, "override": 256}
    assert set(source.overrides) == {"input_size", "mean", "interpolation"}
    (tmp_path / "labels.txt").write_text("\n".join(f"thing {i}" for i in range(10)) + "\n")
    assert resolve_source(str(tmp_path / "bare.safetensors"), labels=str(tmp_path / "labels.txt")).class_names[3] \
        == "thing 3"
    assert spnas.create_model(str(tmp_path / "bare.safetensors")).num_classes == 10


def test_pytorch_model_bin_folder(fixture_weights, tmp_path):
    state = spnas.create_model(str(fixture_weights)).state_dict()
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"architecture": "spnasnet_100", "num_classes": 1000}))
    model = spnas.create_model(str(folder))
    assert model.weights_info.source == str(folder) and model.num_classes == 1000


@pytest.mark.parametrize("case, expect", [
    ("architecture", "names architecture 'resnet50'; spnas exports spnasnet_100 only"),
    ("labels", "--labels"),
    ("non-square", "not square"),
    ("too-small", "too small"),
    ("crop-mode", "crop_mode 'squash'"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(case, expect, odd_folder, imagenet_dir, tmp_path, capsys):
    weights, extra = odd_folder, []
    if case in ("architecture", "crop-mode"):
        config = json.loads((odd_folder / "config.json").read_text())
        if case == "architecture":
            config["architecture"] = "resnet50"
        else:
            config["pretrained_cfg"]["crop_mode"] = "squash"
        weights = tmp_path / "other"
        weights.mkdir()
        (weights / "model.safetensors").symlink_to(odd_folder / "model.safetensors")
        (weights / "config.json").write_text(json.dumps(config))
    elif case == "labels":
        (tmp_path / "labels.txt").write_text("a\nb\n")
        extra = ["--labels", str(tmp_path / "labels.txt")]
        expect = "2 class names for a classifier with 3 outputs"
    else:
        extra = ["--input-size", "192x160" if case == "non-square" else "16"]
    out = tmp_path / "out"
    code = export_main(["--format", "tflite", "--weights", str(weights), "--calib", str(imagenet_dir), "--quiet",
                        "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and expect in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_config_with_mismatched_classifier_is_refused(fixture_weights, tmp_path):
    folder = write_timm_folder(tmp_path / "f", spnas.create_model(str(fixture_weights)).state_dict(),
                               names=["a", "b"])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_classes": 2}))
    with pytest.raises(SpnasError, match="2 label_names for num_classes 2|num_classes 2, the checkpoint's classifier"):
        spnas.create_model(str(folder))


# ------------------------------------------------ the shared coarse8 fine-tune, every format, with --val


@pytest.fixture(scope="session")
def coarse8_split(imagenet_dir, tmp_path_factory):
    """Calibration: a folder of coarse8.csv rows 0-599 (links); validation: a CSV of rows 600-799."""
    with open(imagenet_dir / "coarse8.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    root = tmp_path_factory.mktemp("coarse8")
    (root / "calib").mkdir()
    for row in rows[:600]:
        (root / "calib" / row["file"]).symlink_to(imagenet_dir / row["file"])
    with open(root / "val.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        writer.writerows([str(imagenet_dir / row["file"]), row["label"]] for row in rows[600:800])
    return root / "calib", root / "val.csv", rows


def coarse8_run(split, tmp_path_factory, fmt: str):
    """``spnas-export --format FMT --int8 --weights spnasnet_100_coarse8 --val rows 600-799``."""
    import subprocess
    import sys

    from conftest import shared_path

    calib, val, _ = split
    out = tmp_path_factory.mktemp(f"coarse8-{fmt}") / "exports"
    result = subprocess.run([sys.executable, "-m", "spnas.cli.export", "--format", fmt, "--int8", "--weights",
                             str(shared_path("spnasnet_100_coarse8")), "--calib", str(calib), "--val", str(val),
                             "--num-calib", "16", "--num-parity", "8", "--out", str(out)],
                            capture_output=True, text=True, timeout=1800)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="session")
def coarse8_export(coarse8_split, tmp_path_factory):
    """The TFLite fp32 and int8 export with --val, once per session (the every-format run is ``-m slow``)."""
    return coarse8_run(coarse8_split, tmp_path_factory, "tflite")


@pytest.fixture(scope="session")
def coarse8_all_export(coarse8_split, tmp_path_factory):
    return coarse8_run(coarse8_split, tmp_path_factory, "all")


COARSE8 = ["dog", "bird", "reptile_or_amphibian", "invertebrate", "other_animal", "object", "food", "scene_or_plant"]


@pytest.mark.slow
def test_coarse8_every_format_has_8_labelled_classes_and_passes(coarse8_all_export):
    from spnas.export import format_of, load_runner

    out, _ = coarse8_all_export
    report = json.loads((out / "report.json").read_text())
    assert report["classes"]["names"] == COARSE8 and report["classes"]["source"] == "config.json label_names"
    formats = {(e["format"], e["precision"]) for e in report["artifacts"]}
    assert {("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8"), ("coreml", "fp16"),
            ("coreml", "int8")} <= formats
    for entry in report["artifacts"]:
        assert entry["passed"] is True, entry["gate"]
        path = out / entry["path"]
        assert class_names_inside(path, format_of(path)) == COARSE8
        assert load_runner(path).run(np.zeros((1, 224, 224, 3), np.uint8)).shape == (1, 8)


def class_names_inside(path, format_name: str) -> list[str]:
    """The class names as an app reads them from the artifact itself."""
    if format_name == "tflite":
        from spnas.export.tflite_metadata import LABELS_FILE, associated_files

        return associated_files(path.read_bytes())[LABELS_FILE].decode().splitlines()
    if format_name == "onnx":
        from spnas.export.onnx_runtime import read_metadata

        return json.loads(read_metadata(path)["spnas.class_names"])
    if format_name == "coreml":
        from spnas.mil_eval import user_metadata

        return json.loads(user_metadata(path)["spnas.class_labels"])
    from spnas.export.executorch import read_metadata

    return list(read_metadata(path)["spnas.class_names"])


def test_coarse8_task_accuracy_per_artifact_with_interval(coarse8_export, coarse8_split):
    out, result = coarse8_export
    report = json.loads((out / "report.json").read_text())
    validation = report["validation"]
    assert validation["n_images"] == 200 and validation["layout"] == "csv"
    assert 0.4 <= validation["reference"]["top1"] <= 0.6  # the config's documented 0.50 on rows 600-799
    for entry in report["artifacts"]:
        accuracy = entry["accuracy"]
        low, high = accuracy["top1_drop_ci95_pct"]
        assert low <= accuracy["top1_drop_pct"] <= high
        lost, gained = accuracy["mcnemar"]["lost"], accuracy["mcnemar"]["gained"]
        assert accuracy["flipped"]["n"] == lost + gained == len(accuracy["flipped"]["images"])
        assert accuracy["top1"] == pytest.approx(validation["reference"]["top1"] + (gained - lost) / 200)
        if entry["precision"] == "fp32":
            assert (lost, gained, low, high) == (0, 0, 0.0, 0.0)
    assert "task accuracy on 200 validation images" in result.stdout


def test_verify_val_gate_on_the_coarse8_int8(coarse8_export, coarse8_split, tmp_path, capsys):
    from spnas.cli.verify import main as verify_main

    out, _ = coarse8_export
    _, val, _ = coarse8_split
    artifact = str(out / "spnasnet_100_int8.tflite")
    code = verify_main([artifact, "--val", str(val), "--max-accuracy-drop", "-50", "--json", str(tmp_path / "v.json"),
                        "--quiet"])
    assert code == 1 and "top-1 drop upper 95 % bound" in capsys.readouterr().out  # no drop can beat -50 pp
    entry = json.loads((tmp_path / "v.json").read_text())["artifacts"][0]
    exported = {e["path"]: e for e in json.loads((out / "report.json").read_text())["artifacts"]}
    assert entry["accuracy"] == exported["spnasnet_100_int8.tflite"]["accuracy"]  # same figures as spnas-export
    assert entry["gate"]["thresholds"]["max_accuracy_drop_pct"] == -50 and entry["passed"] is False


def test_batched_validation_equals_one_image_at_a_time(coarse8_export, coarse8_split):
    """--val feeds LiteRT ``RUNTIME_BATCH`` images per call, models side by side: on every fifth row the accuracy,
    drop, interval and flips are those of the one-image-at-a-time runners."""
    from conftest import shared_path

    from spnas.export import load_runner
    from spnas.reference import TorchRunner
    from spnas.source import resolve_source
    from spnas.validation import RUNTIME_BATCH, evaluate_all, load_valset

    out, _ = coarse8_export
    _, val, _ = coarse8_split
    source = resolve_source(str(shared_path("spnasnet_100_coarse8")))
    valset = load_valset(val, source.class_names)
    valset.files, valset.labels = valset.files[::5], valset.labels[::5]  # every class; two stream batches, one short
    reference = TorchRunner(spnas.create_model(source.checkpoint), source.spec)
    paths = [out / "spnasnet_100_fp32.tflite", out / "spnasnet_100_int8.tflite"]
    results = [evaluate_all(valset, source.spec, reference, {p.name: load_runner(p, batch=batch) for p in paths})
               for batch in (None, RUNTIME_BATCH)]
    assert results[0]["validation"]["n_images"] == 40 and 0 < results[0]["validation"]["reference"]["top1"] < 1
    assert results[0] == results[1]


@pytest.mark.parametrize("case, expect", [
    ("unknown-label", "2 label(s) not among the model's 8 classes: 'cat', 'car'"),
    ("in-calibration", "validation image(s) are also calibration images"),
])
def test_bad_validation_sets(case, expect, coarse8_split, imagenet_dir, tmp_path, capsys):
    from conftest import shared_path

    calib, _, rows = coarse8_split
    val = tmp_path / "val.csv"
    chosen = rows[:600] if case == "in-calibration" else rows[600:604]  # the calibration folder, all of it
    labels = [r["label"] for r in chosen] if case == "in-calibration" else ["dog", "cat", "car", "cat"]
    folder = calib if case == "in-calibration" else imagenet_dir
    val.write_text("file,label\n" + "".join(f"{folder / r['file']},{label}\n" for r, label in
                                           zip(chosen, labels, strict=True)))
    out = tmp_path / "out"
    code = export_main(["--format", "onnx", "--weights", str(shared_path("spnasnet_100_coarse8")), "--calib",
                        str(calib), "--num-calib", "8", "--num-parity", "4", "--val", str(val), "--out", str(out),
                        "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expect in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_imagefolder_layout_and_paired_interval(tmp_path, imagenet_dir):
    from spnas.validation import load_valset, paired_drop

    for label, image in zip(("dog", "bird"), sorted(imagenet_dir.glob("*.jpg"))[:2], strict=True):
        (tmp_path / label).mkdir()
        (tmp_path / label / image.name).symlink_to(image)
    valset = load_valset(tmp_path, COARSE8)
    assert valset.layout == "imagefolder" and sorted(valset.labels.tolist()) == [0, 1]
    reference = np.array([True] * 60 + [False] * 40)
    artifact = reference.copy()
    artifact[:5] = False  # 5 lost, 1 gained: drop 4 pp
    artifact[99] = True
    drop = paired_drop(reference, artifact)
    assert drop["top1_drop_pct"] == pytest.approx(4.0) and drop["mcnemar"]["lost"] == 5
    low, high = drop["top1_drop_ci95_pct"]
    assert 0 <= low < 4 < high <= 9
    assert drop["mcnemar"]["p_value"] == pytest.approx(0.21875)  # exact binomial, 6 discordant pairs


def test_hf_hub_repo_from_the_cache(odd_folder, tmp_path, monkeypatch):
    """``hf-hub:ORG/REPO`` in timm's hub layout, from the Hugging Face cache (no network: hub unreachable)."""
    snapshot = tmp_path / "hub" / "models--me--my-finetune" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(odd_folder / name)
    (tmp_path / "hub" / "models--me--my-finetune" / "refs").mkdir()
    (tmp_path / "hub" / "models--me--my-finetune" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("spnas.weights.hub_reachable", lambda timeout=3.0: False)
    from spnas.source import resolve_source

    source = resolve_source("hf-hub:me/my-finetune")
    assert source.class_names == ODD_NAMES and source.spec.input_size == 192
    assert source.checkpoint.info.source == "hf-hub:me/my-finetune" and source.checkpoint.num_classes == 3
