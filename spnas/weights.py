"""Weights for the reference model: local files, the Hugging Face hub, or seeded random.

Every source is validated before use: missing or unexpected keys, shape mismatches,
non-finite values, truncated files and pickles that would run code are refused with a
one-line ``SpnasError``.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError

HUB_ID = "timm/spnasnet_100.rmsp_in1k"
HUB_PREFIX = "hf-hub:"
HUB_FILE = "model.safetensors"
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


def hub_download(hub_id: str, local_only: bool) -> Path:
    """Fetch ``model.safetensors`` of a hub repo into the huggingface_hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if not local_only and not hub_reachable():
        raise SpnasError(f"weights {HUB_PREFIX}{hub_id}: the Hugging Face hub is unreachable (offline?); download "
                         f"{HUB_FILE} elsewhere and pass --weights path/to/model.safetensors")
    try:
        return Path(hf_hub_download(hub_id, HUB_FILE, local_files_only=local_only, etag_timeout=5))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        where = "in the local cache" if local_only else "(offline or unreachable hub)"
        raise SpnasError(f"weights {HUB_PREFIX}{hub_id}: cannot get {HUB_FILE} {where}; download it elsewhere "
                         "and pass --weights path/to/model.safetensors") from exc


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


def load_weights(model, weights: str, *, bn_pixels: np.ndarray | None = None, spec=None) -> WeightsInfo:
    """Fill ``model`` from ``weights`` ("auto", "random", "hf-hub:<id>" or a file path)."""
    if weights == "auto":
        for local_only in (True, False):
            try:
                path = hub_download(HUB_ID, local_only)
            except SpnasError:
                continue
            return _load_file(model, path, f"{HUB_PREFIX}{HUB_ID}")
        warnings.warn(RANDOM_WARNING, stacklevel=2)
        return _randomize(model, bn_pixels, spec)
    if weights == "random":
        return _randomize(model, bn_pixels, spec)
    if weights.startswith(HUB_PREFIX):
        return _load_file(model, hub_download(weights.removeprefix(HUB_PREFIX), local_only=False), weights)
    return _load_file(model, Path(weights), str(weights))


def _load_file(model, path: Path, source: str) -> WeightsInfo:
    from spnas.io import sha256_file

    apply_state_dict(model, read_state_dict(path), source)
    model.eval()
    return WeightsInfo(source=source, sha256=sha256_file(path))


def _randomize(model, bn_pixels, spec) -> WeightsInfo:
    from spnas.model import init_weights
    from spnas.preprocess import DEFAULT_SPEC

    init_weights(model, RANDOM_SEED)
    if bn_pixels is not None and len(bn_pixels):
        reestimate_batchnorm(model, bn_pixels, spec or DEFAULT_SPEC)
    model.eval()
    return WeightsInfo(source="random", sha256=None, warning=RANDOM_WARNING)
