"""Preprocessing against timm's eval transform, and the calibration/parity split."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from spnas.errors import SpnasError
from spnas.images import EMBEDDED_DIR, split_images
from spnas.intake import load_pixels
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize


def test_spec_matches_timm_eval_transform():
    spec = DEFAULT_SPEC.to_dict()
    assert spec["resize_size"] == 256 and spec["input_size"] == 224 and spec["interpolation"] == "bilinear"
    assert spec["mean"] == [0.485, 0.456, 0.406] and spec["std"] == [0.229, 0.224, 0.225]
    assert PreprocessSpec.from_dict(spec) == DEFAULT_SPEC


def test_resize_and_center_crop_geometry(tmp_path):
    # A 300x600 (w x h) image with a marker: short side -> 256 gives 256x512, crop rows 144..367.
    array = np.zeros((600, 300, 3), np.uint8)
    array[300:, :, 0] = 255  # bottom half red
    path = tmp_path / "tall.png"
    Image.fromarray(array).save(path)
    crop = load_pixels(path)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    # Row 256 of the resized image is the red boundary; in crop coordinates that is row 256-144=112.
    assert crop[100, 112, 0] == 0 and crop[124, 112, 0] == 255


def test_normalize_matches_torch_to_tensor_and_normalize():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(DEFAULT_SPEC.mean).view(1, 3, 1, 1)
    std = torch.tensor(DEFAULT_SPEC.std).view(1, 3, 1, 1)
    np.testing.assert_array_equal(normalize(pixels), ((tensor - mean) / std).numpy())
    np.testing.assert_array_equal(normalize(pixels, layout="NHWC"), normalize(pixels).transpose(0, 2, 3, 1))


def test_bilinear_downscale_is_antialiased_like_pil(tmp_path):
    """torchvision resizes PIL images with PIL's antialiased bilinear; plain bilinear differs."""
    rng = np.random.default_rng(0)
    path = tmp_path / "large.png"
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(path)
    ours = load_pixels(path).astype(np.float32)

    def torch_resize_crop(antialias: bool) -> np.ndarray:
        rgb = torch.from_numpy(np.asarray(Image.open(path), np.float32)).permute(2, 0, 1)[None]
        resized = F.interpolate(rgb, size=(256, 341), mode="bilinear", antialias=antialias, align_corners=False)[0]
        return resized[:, 16:240, 58:282].permute(1, 2, 0).numpy()

    assert np.abs(ours - torch_resize_crop(antialias=True)).mean() < 1.0
    assert np.abs(ours - torch_resize_crop(antialias=False)).mean() > 10.0


def test_split_is_seeded_disjoint_and_manifested(imagenet_dir):
    calib, parity = split_images(imagenet_dir, num_calib=20, num_parity=10, seed=3)
    again_calib, again_parity = split_images(imagenet_dir, num_calib=20, num_parity=10, seed=3)
    assert calib.paths == again_calib.paths and parity.paths == again_parity.paths
    assert not set(calib.paths) & set(parity.paths)
    assert (len(calib), len(parity)) == (20, 10)
    entry = calib.manifest()[0]
    assert set(entry) == {"file", "sha256"} and len(entry["sha256"]) == 64
    other, _ = split_images(imagenet_dir, num_calib=20, num_parity=10, seed=4)
    assert other.paths != calib.paths


def test_embedded_default_set():
    calib, parity = split_images(None)
    assert len(calib) >= 8 and len(parity) >= 2 and calib.root == EMBEDDED_DIR
    assert (EMBEDDED_DIR / "ATTRIBUTION.md").exists()


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, imagenet_dir):
    for path in sorted(imagenet_dir.glob("*.jpg"))[:6]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match="skipping image .*broken.jpg: cannot decode"):
        calib, parity = split_images(tmp_path, num_calib=10, num_parity=2)
    assert len(calib) + len(parity) == 6


@pytest.mark.parametrize("case", ["empty", "missing", "all-corrupt"])
def test_unusable_folders_are_errors(tmp_path, case):
    folder = tmp_path / "images"
    if case != "missing":
        folder.mkdir()
    if case == "all-corrupt":
        for i in range(3):
            (folder / f"{i}.png").write_bytes(b"\x89PNG garbage")
    warns = pytest.warns(UserWarning) if case == "all-corrupt" else contextlib.nullcontext()
    with warns, pytest.raises(SpnasError, match="images|not found"):
        split_images(folder)
