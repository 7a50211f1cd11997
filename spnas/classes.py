"""ImageNet-1k class names, index-ordered, generated from timm's wheel (see data/IMAGENET_CLASSES.md)."""

from __future__ import annotations

from pathlib import Path

from spnas.errors import SpnasError

CLASS_NAMES_PATH = Path(__file__).parent / "data" / "imagenet_classes.txt"


def read_class_names(path: Path = CLASS_NAMES_PATH) -> list[str]:
    if not path.is_file():
        raise SpnasError(f"{path}: ImageNet class names missing from the installation")
    names = path.read_text(encoding="utf-8").splitlines()
    if len(names) != 1000 or any(not name.strip() for name in names):
        raise SpnasError(f"{path}: expected 1000 non-empty class names, found {len(names)} lines")
    return names
