"""report.json: the contract every exporter fills in and CI tools read."""

from __future__ import annotations

import json
from pathlib import Path

from spnas import __version__
from spnas.io import atomic_write_text


def build_report(*, weights, preprocessing, calibration, parity_images, artifacts: list[dict],
                 warnings: list[str], classes: dict, overrides: dict, validation: dict | None = None) -> dict:
    """Assemble the report; artifact paths are relative to the output folder.

    ``classes``: the classifier's names and where they came from; ``overrides``: each preprocessing
    value a flag changed from the checkpoint's config (``{name: {"config", "override"}}``);
    ``validation``: the ``--val`` set and the reference's accuracy (each artifact has its own).
    """
    return {
        "spnas_version": __version__,
        "weights": weights.to_dict(),
        "classes": classes,
        "preprocessing": {**preprocessing.to_dict(), "overrides": overrides},
        "calibration": {"n_images": len(calibration), "source": str(calibration.root),
                        "manifest": calibration.manifest()},
        "parity_images": {"n_images": len(parity_images), "source": str(parity_images.root),
                          "manifest": parity_images.manifest()},
        "validation": validation,
        "artifacts": artifacts,
        "warnings": warnings,
    }


def write_report(report: dict, path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(report, indent=2) + "\n")
