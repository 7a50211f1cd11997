"""Calibration, held-out parity and validation image sets: a seeded disjoint split, a manifest.

Which files are images and how they are decoded is ``spnas.intake``'s policy: unusable files
are skipped with a warning; a folder with no usable image is an error.  With no ``--calib``
folder, a small set of public-domain/CC0 photographs bundled in the package is used (see
``spnas/data/calibration/ATTRIBUTION.md``).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.intake import IMAGE_SUFFIXES, read_crops, shown, walk_images
from spnas.io import sha256_file
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec

EMBEDDED_DIR = Path(__file__).parent / "data" / "calibration"


@dataclass
class ImageSet:
    """Images with their preprocessed uint8 crops, in a fixed order."""

    paths: list[Path]
    pixels: np.ndarray  # uint8 (N, S, S, 3), S the spec's input size
    root: Path
    skipped: list[str] = field(default_factory=list)  # why each unusable file was left out

    def manifest(self) -> list[dict]:
        return [{"file": str(path.relative_to(self.root)), "sha256": sha256_file(path)} for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)


def load_images(paths: list[Path], root: Path, spec: PreprocessSpec = DEFAULT_SPEC) -> ImageSet:
    """Preprocess images, skipping unusable ones with a warning (``spnas.intake``)."""
    kept, pixels, skipped = read_crops(paths, spec)
    return ImageSet(kept, pixels, Path(root), skipped)


def too_few_error(root: Path, images: ImageSet, n_files: int, need: str) -> SpnasError:
    """One line: how many files were usable, what is needed, and why the first unusable one was skipped."""
    why = f"; first skipped: {images.skipped[0]}" if images.skipped else ""
    return SpnasError(f"image folder {shown(root)}: {len(images)} usable image(s) of {n_files}; {need}{why}")


def no_images_error(root: Path) -> SpnasError:
    return SpnasError(f"image folder {shown(root)}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")


def load_folder(folder: str | Path, spec: PreprocessSpec = DEFAULT_SPEC, limit: int | None = None) -> ImageSet:
    """Every usable image of a folder (the first ``limit`` in sorted order): a validation set.

    Unusable files are skipped with a warning; a folder with none usable is an error.
    """
    root = Path(folder)
    candidates = walk_images(root)[:limit]
    if not candidates:
        raise no_images_error(root)
    images = load_images(candidates, root, spec)
    if not len(images):
        raise too_few_error(root, images, len(candidates), "need at least 1")
    return images


def split_images(folder: str | Path | None, num_calib: int = 200, num_parity: int = 50, seed: int = 0,
                 spec: PreprocessSpec = DEFAULT_SPEC) -> tuple[ImageSet, ImageSet]:
    """A seeded, reproducible, disjoint (calibration, parity) split of a folder's images.

    The parity set is taken first so it never shrinks to nothing: at most a quarter of a
    small folder, at most ``num_parity``; calibration takes up to ``num_calib`` of the rest.
    Only as many images as needed are decoded.
    """
    root = Path(folder) if folder is not None else EMBEDDED_DIR
    candidates = walk_images(root)
    if not candidates:
        raise no_images_error(root)
    random.Random(seed).shuffle(candidates)
    n_parity = max(1, min(num_parity, len(candidates) // 4))
    wanted = n_parity + num_calib
    usable = load_images(candidates[:wanted], root, spec)
    for start in range(wanted, len(candidates), 16):
        if len(usable) >= wanted:
            break
        more = load_images(candidates[start:start + 16], root, spec)
        usable = ImageSet(usable.paths + more.paths, np.concatenate([usable.pixels, more.pixels]), root,
                          usable.skipped + more.skipped)
    if len(usable) <= n_parity:
        raise too_few_error(root, usable, len(candidates), f"need at least {n_parity + 1} (one or more to calibrate, "
                                                           f"{n_parity} held out for parity)")
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
