"""Weights for the reference model: local files, timm's folder layout, the Hugging Face hub, or seeded random.

A source resolves to a ``Checkpoint``: the state dict, its provenance and timm's ``config.json``
(``num_classes``, ``label_names``, ``pretrained_cfg``) when the source has one, so the classifier
size and the preprocessing come from the checkpoint itself.  Every source is validated before
use: another architecture, missing or unexpected keys, shape mismatches, non-finite values,
truncated files and pickles that would run code are refused with a one-line ``SpnasError``.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas.classes import IMAGENET_CLASSES
from spnas.errors import SpnasError

HUB_ID = "timm/spnasnet_100.rmsp_in1k"
HUB_PREFIX = "hf-hub:"
HUB_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
WEIGHT_FILES = (HUB_FILE, "pytorch_model.bin")  # what timm's save_for_hf / push_to_hf_hub write, preferred first
ARCHITECTURE = "spnasnet_100"
RANDOM_SEED = 0
RANDOM_WARNING = ("random weights: no pretrained checkpoint was found, so this model is random "
                  "(BatchNorm re-estimated on calibration images) and NOT FOR DEPLOYMENT; "
                  f"pass --weights {HUB_PREFIX}{HUB_ID} or a local .safetensors file")


@dataclass
class WeightsInfo:
    source: str  # a file path, "hf-hub:<id>" or "random"
    sha256: str | None
    warning: str | None = None

    @property
    def is_random(self) -> bool:
        return self.source == "random"

    def to_dict(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "warning": self.warning}


@dataclass
class Checkpoint:
    """A resolved ``--weights``: its state dict (``None``: seeded random), provenance and timm config."""

    info: WeightsInfo
    state: dict | None
    config: dict  # timm's config.json, {} when the source has none

    @property
    def num_classes(self) -> int:
        """The classifier size: the rows of ``classifier.weight`` (1000 for random weights)."""
        weight = (self.state or {}).get("classifier.weight")
        return IMAGENET_CLASSES if weight is None or weight.ndim != 2 else int(weight.shape[0])

    @property
    def pretrained_cfg(self) -> dict:
        return self.config.get("pretrained_cfg") or {}

    @property
    def label_names(self) -> list[str] | None:
        return self.config.get("label_names")


def read_state_dict(path: str | Path) -> dict:
    """Read a checkpoint file into a {name: torch.Tensor} dict, safely."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SpnasError(f"weights {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SpnasError(f"weights {path}: not a valid safetensors file ({_first_line(exc)})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SpnasError(f"weights {path}: refused, the pickle would run code or load non-tensor objects "
                         "(only plain state dicts load; prefer .safetensors)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SpnasError(f"weights {path}: truncated or corrupt checkpoint ({_first_line(exc)})") from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpnasError(f"weights {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def apply_state_dict(model, state: dict, origin: str) -> None:
    """Load with timm's names and strict checks, failing in one line on any mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise SpnasError(f"weights {origin}: not an spnasnet_100 checkpoint: {', '.join(parts)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SpnasError(f"weights {origin}: shape mismatch for {name}: checkpoint "
                             f"{tuple(tensor.shape)}, model {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise SpnasError(f"weights {origin}: non-finite values (NaN/Inf) in {name}")
    model.load_state_dict(state, strict=True)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, so an offline machine fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_download(hub_id: str, local_only: bool, filename: str = HUB_FILE) -> Path:
    """Fetch one file of a hub repo into the huggingface_hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if not local_only and not hub_reachable():
        raise SpnasError(f"weights {HUB_PREFIX}{hub_id}: the Hugging Face hub is unreachable (offline?); download "
                         f"{filename} elsewhere and pass --weights path/to/model.safetensors")
    try:
        return Path(hf_hub_download(hub_id, filename, local_files_only=local_only, etag_timeout=5))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        where = "in the local cache" if local_only else "(offline or unreachable hub)"
        raise SpnasError(f"weights {HUB_PREFIX}{hub_id}: cannot get {filename} {where}; download it elsewhere "
                         "and pass --weights path/to/model.safetensors") from exc


def _hub_checkpoint(hub_id: str, local_only: bool) -> Checkpoint:
    """A hub repo as timm writes it: ``config.json`` (optional) and the first weights file it has."""
    try:
        config = read_config(hub_download(hub_id, local_only, CONFIG_FILE), f"{HUB_PREFIX}{hub_id}")
    except SpnasError as exc:
        if "cannot get" not in str(exc) and "unreachable" not in str(exc):
            raise
        config = {}
    failure = None
    for filename in WEIGHT_FILES:
        try:
            path = hub_download(hub_id, local_only, filename)
        except SpnasError as exc:
            failure = failure or exc
            continue
        return _file_checkpoint(path, f"{HUB_PREFIX}{hub_id}", config)
    raise failure


def read_config(path: Path, origin: str) -> dict:
    """timm's ``config.json``, checked: the architecture, and a classifier size that agrees with its labels."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpnasError(f"weights {origin}: unreadable {CONFIG_FILE} ({_first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise SpnasError(f"weights {origin}: {CONFIG_FILE} is not a JSON object")
    architecture = str(config.get("architecture", ARCHITECTURE))
    if architecture.split(".")[0] != ARCHITECTURE:
        raise SpnasError(f"weights {origin}: {CONFIG_FILE} names architecture {architecture!r}; spnas exports "
                         f"{ARCHITECTURE} only")
    labels = config.get("label_names")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(n, str) for n in labels)):
        raise SpnasError(f"weights {origin}: {CONFIG_FILE} label_names is not a list of strings")
    if labels is not None and "num_classes" in config and len(labels) != config["num_classes"]:
        raise SpnasError(f"weights {origin}: {CONFIG_FILE} has {len(labels)} label_names for num_classes "
                         f"{config['num_classes']}")
    return config


def _folder_checkpoint(folder: Path) -> Checkpoint:
    """A local folder in timm's layout: ``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``."""
    config = read_config(folder / CONFIG_FILE, str(folder)) if (folder / CONFIG_FILE).is_file() else {}
    for filename in WEIGHT_FILES:
        if (folder / filename).is_file():
            return _file_checkpoint(folder / filename, str(folder), config)
    raise SpnasError(f"weights {folder}: folder has no {' or '.join(WEIGHT_FILES)}")


def _file_checkpoint(path: Path, source: str, config: dict) -> Checkpoint:
    from spnas.io import sha256_file

    state = read_state_dict(path)
    checkpoint = Checkpoint(WeightsInfo(source=source, sha256=sha256_file(path)), state, config)
    if "num_classes" in config and config["num_classes"] != checkpoint.num_classes:
        raise SpnasError(f"weights {source}: {CONFIG_FILE} says num_classes {config['num_classes']}, the "
                         f"checkpoint's classifier has {checkpoint.num_classes}")
    return checkpoint


def resolve_checkpoint(weights: str) -> Checkpoint:
    """``weights`` ("auto", "random", "hf-hub:<id>", a timm folder or a checkpoint file) as a ``Checkpoint``."""
    if weights == "auto":
        for local_only in (True, False):
            try:
                return _hub_checkpoint(HUB_ID, local_only)
            except SpnasError:
                continue
        warnings.warn(RANDOM_WARNING, stacklevel=2)
        return random_checkpoint()
    if weights == "random":
        return random_checkpoint()
    if weights.startswith(HUB_PREFIX):
        hub_id = weights.removeprefix(HUB_PREFIX)
        try:
            return _hub_checkpoint(hub_id, local_only=True)
        except SpnasError:
            return _hub_checkpoint(hub_id, local_only=False)
    path = Path(weights)
    return _folder_checkpoint(path) if path.is_dir() else _file_checkpoint(path, str(weights), {})


def random_checkpoint() -> Checkpoint:
    return Checkpoint(WeightsInfo(source="random", sha256=None, warning=RANDOM_WARNING), None, {})


def reestimate_batchnorm(model, pixels: np.ndarray, spec) -> None:
    """Recompute BatchNorm running statistics on real images (cumulative average)."""
    import torch

    from spnas.preprocess import normalize

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(pixels), 16):
            model(torch.from_numpy(normalize(pixels[start:start + 16], spec)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    model.eval()


def load_checkpoint(model, checkpoint: Checkpoint, *, bn_pixels: np.ndarray | None = None, spec=None) -> WeightsInfo:
    """Fill ``model`` from a resolved checkpoint (strict keys and shapes); random: seeded, BatchNorm re-estimated."""
    if checkpoint.state is None:
        from spnas.model import init_weights
        from spnas.preprocess import DEFAULT_SPEC

        init_weights(model, RANDOM_SEED)
        if bn_pixels is not None and len(bn_pixels):
            reestimate_batchnorm(model, bn_pixels, spec or DEFAULT_SPEC)
    else:
        apply_state_dict(model, checkpoint.state, checkpoint.info.source)
    model.eval()
    return checkpoint.info
