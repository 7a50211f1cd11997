"""report.json: the contract every exporter fills in and CI tools read, and its typed form ``Report``.

``Report`` is what ``spnas.export(...)`` and ``spnas.verify(...)`` return; the CLIs write
``Report.to_json()``, so the file and the Python object cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spnas.io import atomic_write_text
from spnas.version import __version__


def build_report(*, weights, preprocessing, calibration, parity_images, artifacts: list[dict],
                 warnings: list[str], classes: dict, overrides: dict, validation: dict | None = None,
                 int8_agreement: dict | None = None, int8_plan: dict | None = None) -> dict:
    """Assemble the report; artifact paths are relative to the output folder.

    ``classes``: the classifier's names and where they came from; ``overrides``: each preprocessing
    value a flag changed from the checkpoint's config (``{name: {"config", "override"}}``);
    ``validation``: the ``--val`` set and the reference's accuracy (each artifact has its own);
    ``int8_agreement``: the pairwise SQNR of the int8 artifacts that lower one plan (``spnas.verify.int8_agreement``);
    ``int8_plan``: that plan's simulation against float, pooled features and logits (``spnas.gates.simulate_plan``).
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
        "int8_plan": int8_plan,
        "int8_agreement": int8_agreement,
        "warnings": warnings,
    }


def write_report(report: Report, path: str | Path) -> Path:
    return atomic_write_text(path, report.to_json())


ARTIFACT_KEYS = ("format", "precision", "path", "size_bytes", "parity", "gate", "passed")


@dataclass
class ArtifactReport:
    """One artifact: where it is, its parity against the reference, its gate, and (with ``--val``) its accuracy."""

    format: str
    precision: str
    path: str  # relative to the export's --out (spnas-export) or as given (spnas-verify)
    size_bytes: int
    parity: dict[str, Any]  # n_images, max_abs_error, max_rel_error, cosine, sqnr_db, top1/top5_agreement
    gate: dict[str, Any]  # status, thresholds, failures
    passed: bool | None  # None: not applicable (int8 on random weights)
    details: dict[str, Any] | None = None  # exporter facts (spnas-export only)
    accuracy: dict[str, Any] | None = None  # --val: top1, top5, top1_drop_pct, its 95 % interval, flips
    extra: dict[str, Any] = field(default_factory=dict)  # other blocks (explain, arm64, ai_hub, ...), kept as written

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactReport:
        known = {key: data[key] for key in (*ARTIFACT_KEYS, "details", "accuracy") if key in data}
        return cls(**known, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        data = {key: getattr(self, key) for key in ARTIFACT_KEYS}
        data.update({key: getattr(self, key) for key in ("details", "accuracy") if getattr(self, key) is not None})
        return {**data, **self.extra}


EXPORT_KEYS = ("spnas_version", "weights", "classes", "preprocessing", "calibration", "parity_images", "validation",
               "artifacts", "int8_plan", "int8_agreement", "warnings")
VERIFY_KEYS = ("spnas_version", "weights", "images", "validation", "artifacts", "int8_plan", "int8_agreement")


@dataclass
class Report:
    """spnas-export's ``report.json`` (``kind="export"``) or spnas-verify's ``--json`` (``kind="verify"``)."""

    kind: str
    spnas_version: str
    weights: dict[str, Any]  # source, sha256, warning
    artifacts: list[ArtifactReport]
    classes: dict[str, Any] | None = None  # num_classes, source, names
    preprocessing: dict[str, Any] | None = None  # the PreprocessSpec, plus the flags' overrides
    calibration: dict[str, Any] | None = None  # n_images, source, manifest (file, sha256)
    parity_images: dict[str, Any] | None = None
    images: dict[str, Any] | None = None  # spnas-verify: the parity images used
    validation: dict[str, Any] | None = None  # --val: the set and the reference's accuracy
    int8_plan: dict[str, Any] | None = None  # the plan's simulation vs float (pooled features, logits), its gate
    int8_agreement: dict[str, Any] | None = None  # pairwise SQNR of the int8 artifacts of one plan, and its gate
    warnings: list[str] = field(default_factory=list)
    exit_code: int = 0  # what the CLI exits with: 0 every gate passed, 1 a gate failed

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def from_dict(cls, data: dict, kind: str = "export", exit_code: int = 0) -> Report:
        keys = EXPORT_KEYS if kind == "export" else VERIFY_KEYS
        values = {key: data.get(key) for key in keys if key != "artifacts"}
        return cls(kind=kind, artifacts=[ArtifactReport.from_dict(a) for a in data["artifacts"]],
                   exit_code=exit_code, **values)

    def to_dict(self) -> dict:
        keys = EXPORT_KEYS if self.kind == "export" else VERIFY_KEYS
        return {key: [a.to_dict() for a in self.artifacts] if key == "artifacts" else getattr(self, key)
                for key in keys}

    def to_json(self) -> str:
        """Exactly the text the CLI writes (``report.json`` / ``spnas-verify --json``)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _version_tuple(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    return tuple(int(p) for p in parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else None


def _require(report: dict, dotted: str, kind: type | tuple[type, ...]):
    """The field at a dotted path, checked for type; a one-line error naming the field otherwise."""
    value = report
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"no {dotted!r}")
        value = value[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{dotted!r} is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
    return value


def _check_manifest(report: dict, section: str) -> None:
    _require(report, f"{section}.source", str)
    for index, entry in enumerate(_require(report, f"{section}.manifest", list)):
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or not file or Path(file).is_absolute() or ".." in Path(file).parts:
            raise ValueError(f"{section}.manifest[{index}] is not a relative file inside the image folder")


def read_report(path: str | Path) -> dict:
    """A ``report.json`` as spnas-verify relies on it, or ``SpnasError`` in one line (see ``parse_report``)."""
    from spnas.errors import SpnasError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpnasError(f"{path}: cannot read it ({exc.__class__.__name__})") from exc
    return parse_report(text, path)


def parse_report(text: str, source: str | Path = "report.json") -> dict:
    """The report in ``text``, or ``SpnasError`` in one line naming ``source``: not JSON, a field missing or of the
    wrong type, a manifest path outside its folder, or written by a newer spnas whose contract this one lacks."""
    from spnas.errors import SpnasError

    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpnasError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "re-export to rewrite it") from exc
    except RecursionError as exc:
        raise SpnasError(f"{source}: not a spnas report (nested too deeply to parse)") from exc
    try:
        if not isinstance(report, dict):
            raise ValueError(f"the top level is {type(report).__name__}, expected an object")
        version = _require(report, "spnas_version", str)
        ours, theirs = _version_tuple(__version__), _version_tuple(version)
        if theirs is None:
            raise ValueError(f"spnas_version {version[:40]!r} is not a version")
        if theirs > ours:
            raise SpnasError(f"{source}: written by spnas {version[:40]}, newer than this spnas {__version__}; "
                             "upgrade spnas")
        _require(report, "weights.source", str)
        _check_manifest(report, "calibration")
        _check_manifest(report, "parity_images")
        _require(report, "artifacts", list)
    except ValueError as exc:
        raise SpnasError(f"{source}: not a spnas report ({exc}); re-export to rewrite it") from exc
    return report
