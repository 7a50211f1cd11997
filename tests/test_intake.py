"""The image intake policy on hostile images the tests make themselves (spnas/intake.py)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from spnas.errors import SpnasError
from spnas.images import load_folder, split_images
from spnas.intake import MAX_PIXELS_ENV, UnusableImage, load_pixels, open_rgb, read_crops, shown, walk_images
from spnas.preprocess import resize_and_crop

EXPORT = [sys.executable, "-m", "spnas.cli.export"]


def photo(size=(320, 256), seed=0) -> Image.Image:
    """A smooth RGB test picture (gradients plus a little noise), so resizes are not degenerate."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(np.clip(rgb + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8))


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` and that holds no pixel data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def crop_of(image: Image.Image) -> np.ndarray:
    """What timm's loader gives: ``convert("RGB")`` then the eval transform."""
    return resize_and_crop(image.convert("RGB"))


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_cmyk_and_grayscale_jpeg_convert_as_pil(tmp_path, mode):
    path = tmp_path / f"{mode}.jpg"
    photo().convert(mode).save(path, quality=95)
    with Image.open(path) as reference:
        expected = crop_of(reference)
    np.testing.assert_array_equal(load_pixels(path), expected)
    if mode == "L":
        crop = load_pixels(path)
        assert (crop[..., 0] == crop[..., 1]).all() and (crop[..., 1] == crop[..., 2]).all()


def test_16_bit_png_is_clipped_as_pillow_does(tmp_path):
    path = tmp_path / "deep.png"
    values = np.linspace(0, 1000, 256 * 320).reshape(256, 320).astype(np.uint16)
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
        expected = crop_of(image)
    crop = load_pixels(path)
    np.testing.assert_array_equal(crop, expected)
    assert crop.max() == 255 and (crop == 255).mean() > 0.5  # clipped, not rescaled: timm sees the same


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((256, 320, 4), np.uint8)
    rgba[..., 0] = 200  # red stored under fully transparent pixels
    rgba[:, 160:, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    crop = load_pixels(path)
    assert (crop[..., 0] == 200).all() and (crop[..., 1:] == 0).all()


def test_palette_png_with_transparency_keeps_palette_colours(tmp_path):
    image = photo().convert("P", palette=Image.ADAPTIVE, colors=16)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    with Image.open(path) as reference:
        assert reference.mode == "P" and "transparency" in reference.info
        expected = crop_of(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "palette images with transparency" warning is not passed on
        np.testing.assert_array_equal(load_pixels(path), expected)


def test_exif_orientation_is_not_applied(tmp_path):
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "rotated.jpg"
    photo().save(plain, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    photo().save(rotated, quality=95, exif=exif)
    with Image.open(rotated) as check:
        assert check.getexif()[0x0112] == 6
    np.testing.assert_array_equal(load_pixels(rotated), load_pixels(plain))


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animations_give_their_first_frame(tmp_path, suffix):
    frames = [photo(seed=0), Image.new("RGB", (320, 256), (0, 0, 255))]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    with Image.open(path) as image:
        assert getattr(image, "n_frames", 1) == 2
        expected = crop_of(image)
    crop = load_pixels(path)
    np.testing.assert_array_equal(crop, expected)
    assert crop[..., 2].mean() < 200  # not the blue second frame


def test_bomb_header_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 100_000, 100_000)  # 10 gigapixels, 60 bytes
    with pytest.raises(UnusableImage, match=r"100000x100000 = 10,000,000,000 pixels is over the limit of 89,478,485"):
        open_rgb(bomb)


def test_the_pixel_limit_can_be_changed(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    photo().save(path)
    assert load_pixels(path).shape == (224, 224, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "50000")
    with pytest.raises(UnusableImage, match="320x256 = 81,920 pixels is over the limit of 50,000"):
        load_pixels(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(SpnasError, match="SPNAS_MAX_IMAGE_PIXELS='lots'"):
        load_pixels(path)


def test_extreme_panorama_and_thumbnails_are_refused(tmp_path):
    panorama, thumb = tmp_path / "pano.png", tmp_path / "thumb.png"
    png_header_only(panorama, 100_000, 30)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(thumb)
    with pytest.raises(UnusableImage, match="resizing the short side to 256 px"):
        open_rgb(panorama)
    with pytest.raises(UnusableImage, match="too small to crop"):
        open_rgb(thumb)


def good_folder(folder, count=6):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo(seed=i).save(folder / f"good{i}.jpg", quality=90)
    return folder


def hostile_folder(tmp_path):
    """Six good photos beside every kind of file the policy must skip, warned or silent."""
    folder = good_folder(tmp_path / "photos")
    png_header_only(folder / "bomb.png", 60_000, 60_000)
    Image.new("RGB", (1, 1)).save(folder / "thumb.png")
    whole = (folder / "good0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "text.png").write_text("not an image")
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    (folder / "self.jpg").symlink_to(folder / "self.jpg")
    (folder / "loop").symlink_to(folder)  # a folder symlink loop
    (folder / "notes.txt").write_text("silently skipped")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._good0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork: hidden
    (folder / ".thumbnails").mkdir()
    (folder / ".thumbnails" / "cached.jpg").write_bytes(b"broken and hidden")
    return folder


WARNED = {"bomb.png": "over the limit", "thumb.png": "too small", "truncated.jpg": "cannot decode",
          "text.png": "cannot decode", "fifo.jpg": "not a regular file", "dangling.jpg": "dangling symlink",
          "self.jpg": "dangling symlink"}


def test_hostile_folder_keeps_the_good_photos_with_one_warning_each(tmp_path):
    folder = hostile_folder(tmp_path)
    paths = walk_images(folder)
    assert sorted(p.name for p in paths) == sorted([f"good{i}.jpg" for i in range(6)] + list(WARNED))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept, pixels, skipped = read_crops(paths)
    assert sorted(p.name for p in kept) == [f"good{i}.jpg" for i in range(6)] and pixels.shape == (6, 224, 224, 3)
    messages = [str(w.message) for w in caught]
    assert len(messages) == len(WARNED) and all("\n" not in m for m in messages)
    assert [f"skipping image {reason}" for reason in skipped] == messages
    for name, reason in WARNED.items():
        (message,) = [m for m in messages if f"{name}:" in m]
        assert reason in message, message


def test_odd_file_names(tmp_path):
    folder = tmp_path / "odd"
    names = ["space name.jpg", "ünïcødé 写真.jpg", "-leading-dash.JPG", "new\nline.jpg", "quote'\"s.png"]
    good_folder(folder, 0)
    for i, name in enumerate(names):
        photo(seed=i).save(folder / name, format="PNG" if name.endswith(".png") else "JPEG")
    raw = os.fsencode(folder) + b"/bytes-\xff\xfe.jpg"  # not valid UTF-8
    with open(raw, "wb") as handle:
        photo().save(handle, format="JPEG")
    broken = folder / "broken\nname.jpg"
    broken.write_text("nope")
    with pytest.warns(UserWarning) as caught:
        images = load_folder(folder)
    assert len(images) == len(names) + 1
    assert all(len(entry["sha256"]) == 64 for entry in images.manifest())
    (message,) = [str(w.message) for w in caught]
    assert "broken\\nname.jpg" in message and "\n" not in message
    assert shown(os.fsdecode(raw)).endswith("bytes-\\xff\\xfe.jpg")


def test_nothing_usable_left_is_an_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    png_header_only(folder / "bomb.png", 60_000, 60_000)
    (folder / "x.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.warns(UserWarning), pytest.raises(SpnasError, match="0 usable image.* of 2; need at least 1; first "
                                                                    "skipped: .*bomb.png: 60000x60000"):
        load_folder(folder)
    (folder / "x.jpg").unlink()
    (folder / "bomb.png").unlink()
    with pytest.raises(SpnasError, match="no images"):
        load_folder(folder)


def test_split_survives_a_bomb_among_good_photos(tmp_path):
    folder = good_folder(tmp_path / "calib", 8)
    png_header_only(folder / "bomb.png", 60_000, 60_000)
    with pytest.warns(UserWarning, match="bomb.png: 60000x60000"):
        calib, parity = split_images(folder, num_calib=10, num_parity=2)
    assert len(calib) + len(parity) == 8


def test_export_on_a_folder_of_only_bad_images_is_one_line(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    png_header_only(folder / "bomb.png", 60_000, 60_000)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    out = tmp_path / "out"
    result = subprocess.run([*EXPORT, "--format", "onnx", "--calib", str(folder), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: image folder {folder}: 0 usable image(s) of 3; need at least 2 (one or more to calibrate, 1 held out "
        f"for parity); first skipped: {folder}/bomb.png: 60000x60000 = 3,600,000,000 pixels is over the limit of "
        "89,478,485 (raise it with --max-image-pixels or $SPNAS_MAX_IMAGE_PIXELS)"]
    assert not out.exists()
