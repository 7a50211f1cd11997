"""Calibration and held-out parity images: discovery, a seeded disjoint split, a manifest.

Unreadable files are skipped with a warning; a folder with no usable image is an error.
With no ``--calib`` folder, a small set of public-domain/CC0 photographs bundled in the
package is used (see ``spnas/data/calibration/ATTRIBUTION.md``).
"""

from __future__ import annotations

import csv
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.io import sha256_file
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, load_pixels

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
EMBEDDED_DIR = Path(__file__).parent / "data" / "calibration"


@dataclass
class ImageSet:
    """Images with their preprocessed uint8 crops, in a fixed order."""

    paths: list[Path]
    pixels: np.ndarray  # uint8 (N, 224, 224, 3)
    root: Path

    def manifest(self) -> list[dict]:
        return [{"file": str(path.relative_to(self.root)), "sha256": sha256_file(path)} for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SpnasError(f"image folder {folder}: not found or not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_images(paths: list[Path], root: Path, spec: PreprocessSpec = DEFAULT_SPEC) -> ImageSet:
    """Preprocess images, skipping unreadable ones with a warning."""
    kept, crops = [], []
    for path in paths:
        try:
            crops.append(load_pixels(path, spec))
        except (OSError, ValueError, SyntaxError) as exc:
            warnings.warn(f"skipping unreadable image {path}: {exc}", stacklevel=2)
            continue
        kept.append(path)
    pixels = np.stack(crops) if crops else np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    return ImageSet(kept, pixels, Path(root))


def split_images(folder: str | Path | None, num_calib: int = 200, num_parity: int = 50, seed: int = 0,
                 spec: PreprocessSpec = DEFAULT_SPEC) -> tuple[ImageSet, ImageSet]:
    """A seeded, reproducible, disjoint (calibration, parity) split of a folder's images.

    The parity set is taken first so it never shrinks to nothing: at most a quarter of a
    small folder, at most ``num_parity``; calibration takes up to ``num_calib`` of the rest.
    Only as many images as needed are decoded.
    """
    root = Path(folder) if folder is not None else EMBEDDED_DIR
    candidates = find_images(root)
    if not candidates:
        raise SpnasError(f"image folder {root}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    random.Random(seed).shuffle(candidates)
    n_parity = max(1, min(num_parity, len(candidates) // 4))
    wanted = n_parity + num_calib
    usable = load_images(candidates[:wanted], root, spec)
    for start in range(wanted, len(candidates), 16):
        if len(usable) >= wanted:
            break
        more = load_images(candidates[start:start + 16], root, spec)
        usable = ImageSet(usable.paths + more.paths, np.concatenate([usable.pixels, more.pixels]), root)
    if len(usable) <= n_parity:
        raise SpnasError(f"image folder {root}: {len(usable)} usable image(s) of {len(candidates)}; need at least "
                         f"{n_parity + 1} (one or more to calibrate, {n_parity} held out for parity)")
    parity = ImageSet(usable.paths[:n_parity], usable.pixels[:n_parity], root)
    calib = ImageSet(usable.paths[n_parity:wanted], usable.pixels[n_parity:wanted], root)
    return calib, parity


PROTOCOL_CALIB_ROWS = (0, 128)
PROTOCOL_EVAL_ROWS = (600, 800)


def fidelity_protocol(labels_csv: str | Path) -> tuple[ImageSet, ImageSet]:
    """(calibration, evaluation) image sets of the int8 fidelity protocol every benchmark uses."""
    return labelled_rows(labels_csv, *PROTOCOL_CALIB_ROWS), labelled_rows(labels_csv, *PROTOCOL_EVAL_ROWS)


def labelled_rows(labels_csv: str | Path, start: int, stop: int, spec: PreprocessSpec = DEFAULT_SPEC) -> ImageSet:
    """Rows ``start:stop`` of an imagenet-sample ``labels.csv``: the fidelity protocol's image sets.

    The protocol shared by all issues and benchmarks calibrates on rows 0-127 and evaluates
    on rows 600-799.
    """
    labels_csv = Path(labels_csv)
    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))[start:stop]
    return load_images([labels_csv.parent / row["file"] for row in rows], labels_csv.parent, spec)
