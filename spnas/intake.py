"""The image intake policy: which files are images, how one is decoded to RGB, which are skipped.

Every place that turns a user's image file into pixels goes through here: calibration and parity
sets (``spnas.images``), ``spnas-verify --images``, validation sets (``spnas.images.load_folder``)
and the Android golden sample.  Runners and the PyTorch reference take the crops made from these
images, so they all see the same pixels.

- **Walk**: recursive; symlinked folders are followed, each real folder once (a symlink loop is
  walked once); hidden (dot) files and folders and files without an image suffix are skipped
  silently.
- **Refused before decoding** (skipped with a warning): more than the pixel limit (default: PIL's
  own 89,478,485 px; ``--max-image-pixels N`` or ``$SPNAS_MAX_IMAGE_PIXELS``), which catches
  decompression bombs from the header alone; a resize to the model's short side that would exceed
  the limit (extreme panoramas); a short side under ``input_size // 8`` px (a 1x1 thumbnail
  upscaled 8x or more carries nothing the model can use).
- **Skipped with a warning**: not a regular file (FIFO, dangling symlink), unreadable, not
  decodable, truncated.
- **Converted** exactly as timm's loader does, ``Image.open(f).convert("RGB")``: animations give
  their first frame; alpha is dropped, not composited (the colour stored under a transparent pixel
  is kept; palette transparency is ignored the same way); CMYK is converted without an ICC
  profile; 16-bit greyscale is clipped at 255 by Pillow, not rescaled; EXIF orientation is **not**
  applied (neither timm nor Android's ``BitmapFactory`` applies it), so a photo stored sideways is
  seen sideways everywhere.

Nothing usable left is an error, raised by the callers that need images.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, resize_and_crop

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
MAX_PIXELS_ENV = "SPNAS_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: ~0.25 GiB of decoded RGB


class UnusableImage(SpnasError):
    """One image file the policy skips; the message names the file and says why."""


def shown(path: str | Path) -> str:
    """A path as one printable line (control characters escaped, undecodable bytes shown as \\x..)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def pixel_limit() -> int:
    """The largest width x height decoded: ``$SPNAS_MAX_IMAGE_PIXELS`` or PIL's default."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise SpnasError(f"${MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels")
    return value


def set_pixel_limit(pixels: int | None) -> None:
    """Apply a CLI ``--max-image-pixels`` to this process and its workers."""
    if pixels is not None:
        if pixels < 1:
            raise SpnasError(f"--max-image-pixels {pixels}: expected a positive number of pixels")
        os.environ[MAX_PIXELS_ENV] = str(pixels)


@contextlib.contextmanager
def _own_pixel_check():
    """Let this module, not PIL's global bomb check, decide (so the limit can be raised or lowered)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency ..." from Pillow
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_size(width: int, height: int, spec: PreprocessSpec = DEFAULT_SPEC, limit: int | None = None) -> str | None:
    """Why an image of this size is refused before decoding, or None when it is accepted."""
    limit = limit or pixel_limit()
    hint = f"raise it with --max-image-pixels or ${MAX_PIXELS_ENV}"
    if width * height > limit:
        return f"{width}x{height} = {width * height:,} pixels is over the limit of {limit:,} ({hint})"
    short, long = sorted((width, height))
    min_side = max(1, spec.input_size // 8)
    if short < min_side:
        return f"{width}x{height} is too small to crop (short side under {min_side} px)"
    resized = spec.resize_size * int(spec.resize_size * long / short)
    if resized > limit:
        return (f"{width}x{height}: resizing the short side to {spec.resize_size} px gives {resized:,} pixels, "
                f"over the limit of {limit:,} ({hint})")
    return None


def open_rgb(path: str | Path, spec: PreprocessSpec = DEFAULT_SPEC):
    """Decode one image file to an RGB ``PIL.Image`` under the policy, or raise ``UnusableImage``."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        kind = "a dangling symlink" if path.is_symlink() and not path.exists() else "not a regular file"
        raise UnusableImage(f"{shown(path)}: {kind}")
    try:
        with _own_pixel_check(), Image.open(path) as image:
            refusal = check_size(*image.size, spec)
            if refusal:
                raise UnusableImage(f"{shown(path)}: {refusal}")
            return image.convert("RGB")
    except UnusableImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, Image.DecompressionBombError) as exc:
        if isinstance(exc, Image.UnidentifiedImageError):
            reason = "not an image format Pillow recognises"
        else:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnusableImage(f"{shown(path)}: cannot decode it ({shown(reason)[:160]})") from None


def read_crops(paths: list[Path], spec: PreprocessSpec = DEFAULT_SPEC) -> tuple[list[Path], np.ndarray, list[str]]:
    """(usable paths, their crops, why each other one was skipped); each skip also warns once."""
    kept, crops, skipped = [], [], []
    for path in paths:
        try:
            crops.append(load_pixels(path, spec))
        except UnusableImage as exc:
            warnings.warn(f"skipping image {exc}", stacklevel=2)
            skipped.append(str(exc))
            continue
        kept.append(path)
    pixels = np.stack(crops) if crops else np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    return kept, pixels, skipped


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def walk_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, sorted; each real folder walked once, hidden entries skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpnasError(f"image folder {shown(folder)}: not found or not a directory")
    seen: set[tuple[int, int]] = set()
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        try:
            stat = os.stat(top)
        except OSError:
            dirs.clear()
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [Path(top) / name for name in files
                  if not is_hidden(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def load_pixels(path: str | Path, spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Read an image file into the uint8 (H, W, 3) crop every runner takes.

    Decoding follows the intake policy (``open_rgb``): an unusable file raises ``UnusableImage`` naming it.
    """
    return resize_and_crop(open_rgb(path, spec), spec)
