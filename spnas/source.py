"""What an export or a verification starts from: the checkpoint, its preprocessing and its class names.

Resolved once, before any image is read or any file written, so a bad ``--weights``,
``--labels`` or preprocessing flag fails in one line with nothing left behind.  The
preprocessing comes from the checkpoint's timm ``pretrained_cfg`` (timm's defaults for a bare
state dict), with each command-line override on top and recorded for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spnas.preprocess import PreprocessSpec, spec_from_config
from spnas.weights import Checkpoint, resolve_checkpoint


@dataclass
class ModelSource:
    checkpoint: Checkpoint
    spec: PreprocessSpec
    overrides: dict  # {name: {"config": value, "override": value}} of each preprocessing flag given
    class_names: list[str]
    class_names_source: str
    warnings: list[str] = field(default_factory=list)

    def classes_report(self) -> dict:
        return {"num_classes": len(self.class_names), "source": self.class_names_source, "names": self.class_names}


def resolve_source(weights: str, *, labels: str | None = None, overrides: dict | None = None) -> ModelSource:
    """``--weights`` with ``--labels`` and the preprocessing overrides (``input_size``, ``crop_pct``,
    ``interpolation``, ``mean``, ``std``; ``None`` keeps the checkpoint's value)."""
    from spnas.classes import class_names_for

    checkpoint = resolve_checkpoint(weights)
    spec, applied = spec_from_config(checkpoint.pretrained_cfg, overrides)
    names, names_source, warning = class_names_for(checkpoint.num_classes, checkpoint.label_names, labels)
    return ModelSource(checkpoint, spec, applied, names, names_source, [warning] if warning else [])
