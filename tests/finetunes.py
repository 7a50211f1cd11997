"""Users' fine-tunes of the fixture backbone, made in seconds: timm folders with a new few-class head.

Two recipes a user would follow, on the shared coarse8 labels (``imagenet-sample/coarse8.csv``):
a linear probe (ridge regression of a new head on the pooled features) and a short fine-tune in
which every layer, BatchNorm statistics included, moves (SGD steps in train mode).  Shared by the
tests and ``benchmarks/gate_rule.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def write_timm_folder(folder: Path, state: dict, *, names=None, architecture="spnasnet_100", cfg=None) -> Path:
    """A folder as timm's ``save_for_hf`` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    config = {"architecture": architecture, "num_classes": int(state["classifier.weight"].shape[0]),
              "num_features": 1280, "global_pool": "avg", "pretrained_cfg": cfg or {}}
    if names is not None:
        config["label_names"] = names
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def coarse_labelled(imagenet_dir: Path, names: list[str], count: int, cfg: dict):
    """``(crops, targets)`` of the first ``count`` coarse8 rows, preprocessed as ``cfg`` says; a coarse label
    not among ``names[:-1]`` goes to the last name (the "other" class)."""
    from spnas.images import load_images
    from spnas.preprocess import spec_from_config

    with open(imagenet_dir / "coarse8.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    spec = spec_from_config(cfg)[0]
    images = load_images([imagenet_dir / row["file"] for row in rows], imagenet_dir, spec)
    labels = {row["file"]: row["label"] for row in rows}
    kept = [labels[str(path.relative_to(imagenet_dir))] for path in images.paths]
    targets = [names.index(label) if label in names[:-1] else len(names) - 1 for label in kept]
    return images.pixels, torch.tensor(targets), spec


def linear_probe(fixture_weights: Path, imagenet_dir: Path, names: list[str], cfg: dict, count: int = 48) -> dict:
    """The fixture's state dict with a new head: ridge regression onto one-hot labels of its pooled features."""
    import spnas
    from spnas.preprocess import normalize

    pixels, targets, spec = coarse_labelled(imagenet_dir, names, count, cfg)
    backbone = spnas.create_model(str(fixture_weights), num_classes=0)
    with torch.no_grad():
        features = backbone(torch.from_numpy(normalize(pixels, spec))).double()
    onehot = torch.nn.functional.one_hot(targets, len(names)).double()
    design = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.solve(design.T @ design + 1e-1 * torch.eye(design.shape[1], dtype=torch.float64),
                                  design.T @ onehot)
    return {**spnas.create_model(str(fixture_weights)).state_dict(),
            "classifier.weight": solution[:-1].T.float().contiguous(), "classifier.bias": solution[-1].float()}


def train_all_layers(fixture_weights: Path, imagenet_dir: Path, names: list[str], cfg: dict, *, steps: int = 4,
                     batch: int = 8, lr: float = 0.02, seed: int = 0) -> dict:
    """The fixture with a new head, then ``steps`` SGD steps on every parameter in train mode (BatchNorm
    statistics re-estimated on the way): a short but complete fine-tune."""
    import spnas
    from spnas.preprocess import normalize

    pixels, targets, spec = coarse_labelled(imagenet_dir, names, steps * batch, cfg)
    torch.manual_seed(seed)
    model = spnas.create_model(str(fixture_weights), num_classes=len(names)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x = torch.from_numpy(normalize(pixels, spec))
    for start in range(0, steps * batch, batch):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[start:start + batch]), targets[start:start + batch]).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.eval().state_dict().items()}


def changed_layers(before: dict, after: dict) -> float:
    """Share of the state dict's float tensors that differ (1.0: every layer trained)."""
    keys = [k for k, v in before.items() if v.is_floating_point() and k in after and after[k].shape == v.shape]
    return float(np.mean([not torch.equal(before[k], after[k]) for k in keys]))
