"""ImageNet-1k class names, index-ordered, generated from timm's wheel (see data/IMAGENET_CLASSES.md)."""

from __future__ import annotations

from pathlib import Path

from spnas.errors import SpnasError

CLASS_NAMES_PATH = Path(__file__).parent / "data" / "imagenet_classes.txt"
IMAGENET_CLASSES = 1000


def read_class_names(path: Path = CLASS_NAMES_PATH) -> list[str]:
    if not path.is_file():
        raise SpnasError(f"{path}: ImageNet class names missing from the installation")
    names = path.read_text(encoding="utf-8").splitlines()
    if len(names) != IMAGENET_CLASSES or any(not name.strip() for name in names):
        raise SpnasError(f"{path}: expected {IMAGENET_CLASSES} non-empty class names, found {len(names)} lines")
    return names


def read_labels_file(path: str | Path) -> list[str]:
    """``--labels FILE``: one class name a line, index-ordered (blank trailing lines ignored)."""
    path = Path(path)
    try:
        names = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpnasError(f"--labels {path}: cannot read ({exc.__class__.__name__})") from exc
    names = [name.rstrip("\r") for name in names]
    if any(not name.strip() for name in names):
        raise SpnasError(f"--labels {path}: empty class name on line {[n.strip() for n in names].index('') + 1}")
    return names


def class_names_for(num_classes: int, label_names: list[str] | None = None,
                    labels_file: str | Path | None = None) -> tuple[list[str], str, str | None]:
    """The index-ordered names of a classifier's outputs, where they came from, and a warning if generic.

    ``--labels FILE`` wins over the checkpoint's ``label_names``; with neither, 1000 classes are
    ImageNet-1k and any other count is ``class_0..class_{K-1}``.
    """
    if labels_file is not None:
        names, source = read_labels_file(labels_file), f"--labels {labels_file}"
        if len(names) != num_classes:
            raise SpnasError(f"--labels {labels_file}: {len(names)} class names for a classifier with "
                             f"{num_classes} outputs")
        return names, source, None
    if label_names is not None:
        return list(label_names), "config.json label_names", None
    if num_classes == IMAGENET_CLASSES:
        return read_class_names(), "ImageNet-1k", None
    return ([f"class_{i}" for i in range(num_classes)], "generic",
            f"no class names for the {num_classes}-class classifier: using class_0..class_{num_classes - 1}; "
            "pass --labels FILE (one name a line)")
