"""Regenerate ``imagenet_classes.txt`` from a timm wheel, so the class names can be checked.

Usage (from the repository root; downloads only the wheel, no dependencies)::

    pip download timm==1.0.31 --no-deps -d /tmp/timm
    python spnas/data/make_imagenet_classes.py /tmp/timm/timm-1.0.31-py3-none-any.whl

Line ``i`` of the output is ImageNet-1k class index ``i``: timm's ``imagenet_synsets.txt`` gives
the synset of each index (the standard sorted-synset order every ImageNet classifier uses) and
``imagenet_synset_to_lemma.txt`` its WordNet lemmas; the first lemma is the display name.
The printed digests are the provenance recorded in ``IMAGENET_CLASSES.md``.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

SYNSETS = "timm/data/_info/imagenet_synsets.txt"
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"
OUTPUT = Path(__file__).with_name("imagenet_classes.txt")


def class_names(wheel: Path) -> tuple[list[str], dict[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        synsets_bytes, lemmas_bytes = archive.read(SYNSETS), archive.read(LEMMAS)
    synsets = synsets_bytes.decode().split()
    lemmas = dict(line.split("\t", 1) for line in lemmas_bytes.decode().splitlines() if line)
    if len(synsets) != 1000:
        raise SystemExit(f"{wheel}: {SYNSETS} has {len(synsets)} synsets, expected 1000")
    names = [lemmas[synset].split(", ")[0].strip() for synset in synsets]
    digests = {"wheel": hashlib.sha256(wheel.read_bytes()).hexdigest(),
               SYNSETS: hashlib.sha256(synsets_bytes).hexdigest(), LEMMAS: hashlib.sha256(lemmas_bytes).hexdigest()}
    return names, digests


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    names, digests = class_names(Path(argv[0]))
    OUTPUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    for name, digest in digests.items():
        print(f"sha256 {name}: {digest}")
    print(f"sha256 {OUTPUT.name}: {hashlib.sha256(OUTPUT.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
