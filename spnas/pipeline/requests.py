"""What an export or a verification is asked to do, typed and checked before any work starts.

Every field is named as its command-line flag (``--num-calib`` is ``num_calib``), so the CLIs, the
Python API and ``report.json`` share one vocabulary.  ``from_keywords`` builds a request from flat
keywords, routing the gate overrides to ``GateOverrides`` and the format options to
``FormatOptions``; an unknown keyword, a bad value or a combination that makes no sense raises
``SpnasError`` with one line (the CLI shows it as a usage error).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spnas.errors import SpnasError
from spnas.export.options import OWNER, FormatOptions
from spnas.gates import GateOverrides

FORMAT_CHOICES = ("onnx", "tflite", "coreml", "executorch", "all")
GATE_FIELDS = tuple(f.name for f in dataclasses.fields(GateOverrides))


def _problem(checks) -> None:
    """Raise the first failed check's message."""
    for failed, message in checks:
        if failed:
            raise SpnasError(message)


@dataclass(frozen=True)
class ImagesAndGates:
    """What an export and a verification share: the held-out split, the gates, task accuracy and output."""

    num_calib: int = 200
    num_parity: int = 50
    seed: int = 0
    max_image_pixels: int | None = None
    gates: GateOverrides = field(default_factory=GateOverrides)
    val: str | None = None
    max_accuracy_drop: float | None = None
    val_workers: int | None = None
    strict: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class ExportRequest(ImagesAndGates):
    """``spnas-export``: the formats to write from one checkpoint, the images and gates that prove them."""

    format: str = "tflite"
    int8: bool = False
    weights: str = "auto"
    labels: str | None = None
    # preprocessing overrides; None keeps the checkpoint's timm pretrained_cfg
    input_size: int | str | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: str | None = None
    std: str | None = None
    calib: str | None = None
    fallback: str = "off"
    fallback_layers: int = 3
    plan: str | None = None
    out: str = "exports"
    formats: FormatOptions = field(default_factory=FormatOptions)
    android_assets: str | None = None

    def __post_init__(self):
        targets = ("tflite", "all")
        changed = self.formats.changed()
        _problem([(self.format not in FORMAT_CHOICES,
                   f"unknown format {self.format!r}; choose from {', '.join(FORMAT_CHOICES)}"),
                  (self.num_calib < 1, "--num-calib must be at least 1"),
                  (self.num_parity < 1, "--num-parity must be at least 1"),
                  (self.fallback not in ("off", "auto"), "--fallback: choose from off, auto"),
                  (self.fallback == "auto" and not self.int8, "--fallback auto needs --int8"),
                  (self.plan is not None and not self.int8, "--plan needs --int8"),
                  (self.fallback_layers < 1, "--fallback-layers must be at least 1"),
                  (self.android_assets is not None and self.format not in targets,
                   "--android-assets needs --format tflite or all")])
        for option, owner in changed.items():
            if self.format not in (owner, "all") and option in ONLY_WITH_THEIR_FORMAT:
                raise SpnasError(f"--{option.replace('_', '-')} needs --format {owner} or all")

    @classmethod
    def from_keywords(cls, **keywords: Any) -> ExportRequest:
        """A request from flat keywords: the flags with ``_`` for ``-`` (``num_calib=16``, ``onnx_int8="u8s8"``)."""
        return cls(**_route(cls, keywords))

    def preprocessing_overrides(self) -> dict:
        return {name: getattr(self, name) for name in ("input_size", "crop_pct", "interpolation", "mean", "std")}


# Format options that mean nothing without their format; the others (e.g. ``--fp32``) keep their historical
# leniency, since a script may pass one set of flags to every format.
ONLY_WITH_THEIR_FORMAT = ("app", "coreml_ep", "pte_partitioners")


@dataclass(frozen=True)
class VerifyRequest(ImagesAndGates):
    """``spnas-verify``: artifacts to gate against their reference on held-out images, here or elsewhere."""

    artifacts: tuple[str, ...] = ()
    weights: str | None = None
    images: str | None = None  # parity images split as the export splits them (num_calib skipped, num_parity kept)
    json: str | None = None
    markdown: str | None = None
    explain: bool = False
    node_data: str | None = None
    arm64: bool = False
    cpu: str | None = None
    cpu_images: int = 8
    ai_hub: str | None = None
    ai_hub_devices: str | None = None
    compute_unit: str | None = None
    ai_hub_options: str = ""
    ai_hub_timeout: float = 3600.0

    def __post_init__(self):
        from spnas.bench.aihub import misused_flag

        hub = self.ai_hub or self.ai_hub_devices
        misused = misused_flag(self.compute_unit, self.ai_hub_options, self.ai_hub_timeout)
        _problem([(not self.artifacts, "verify: give at least one artifact"),
                  (not hub and misused is not None, f"{misused} goes with --ai-hub"),
                  (self.compute_unit not in (None, "cpu", "gpu", "npu"), "--compute-unit: choose from cpu, gpu, npu"),
                  (self.node_data is not None and not self.explain, "--node-data goes with --explain"),
                  (self.cpu is not None and self.cpu_images < 1, "--cpu-images must be at least 1")])

    @classmethod
    def from_keywords(cls, artifacts, **keywords: Any) -> VerifyRequest:
        """A request for ``artifacts`` (one path or several) from flat keywords, the flags with ``_`` for ``-``."""
        paths = [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts)
        return cls(**_route(cls, {"artifacts": tuple(str(path) for path in paths), **keywords}))

    def ai_hub_device_names(self) -> list[str] | None:
        """The device names of ``--ai-hub`` and ``--ai-hub-devices`` together, or None without either."""
        from spnas.bench.aihub import device_names

        return device_names(self.ai_hub, self.ai_hub_devices)


def _route(cls, keywords: dict[str, Any]) -> dict[str, Any]:
    """Flat keywords -> the request's fields, with ``gates`` and (for exports) ``formats`` built from theirs;
    paths become strings, as the CLI gives them."""
    own = {f.name for f in dataclasses.fields(cls)} - {"gates", "formats"}
    takes_formats = "formats" in {f.name for f in dataclasses.fields(cls)}
    fields, gates, formats = {}, {}, {}
    for key, value in keywords.items():
        value = str(value) if isinstance(value, Path) else value
        if key in own:
            fields[key] = value
        elif key in GATE_FIELDS:
            gates[key] = value
        elif takes_formats and key in OWNER:
            formats[key] = value
        else:
            flag = "spnas-export" if takes_formats else "spnas-verify"
            raise SpnasError(f"unknown option {key!r}: use the {flag} flags with _ for -, e.g. num_parity")
    if gates:
        fields["gates"] = GateOverrides(**gates)
    if formats:
        fields["formats"] = FormatOptions.of(**formats)
    return fields
