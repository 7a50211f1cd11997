"""Broken checkpoints in timm's layout, written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

PWNED_MARKER = Path("/tmp/spnas-pwned")

# case -> the phrase the one-line refusal must contain
BAD_CHECKPOINTS = {
    "truncated": "not a valid safetensors",
    "wrong-arch": "missing keys",
    "shape": "shape mismatch for conv_head.weight",
    "nan": "non-finite values",
    "code": "would run code",
    "not-tensors": "not a state dict of tensors",
    "missing": "file not found",
}


class RunsCode:
    """A pickle payload that would run a command on load."""

    def __reduce__(self):
        return (os.system, (f"echo pwned > {PWNED_MARKER}",))


def write_bad_checkpoint(folder: Path, case: str, state: dict) -> Path:
    """Write the broken checkpoint ``case`` (a key of ``BAD_CHECKPOINTS``) and return its path."""
    path = folder / ("ckpt.pth" if case in ("code", "not-tensors") else "ckpt.safetensors")
    if case == "truncated":
        save_file(state, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "wrong-arch":
        save_file({k.replace("blocks.", "layers."): v for k, v in state.items()}, path)
    elif case == "shape":
        save_file({**state, "conv_head.weight": torch.zeros(1000, 320, 1, 1)}, path)
    elif case == "nan":
        bad = state["blocks.2.1.conv_dw.weight"].clone()
        bad[0, 0, 0, 0] = float("nan")
        save_file({**state, "blocks.2.1.conv_dw.weight": bad}, path)
    elif case == "code":
        torch.save({"conv_stem.weight": RunsCode()}, path)
    elif case == "not-tensors":
        torch.save({"conv_stem.weight": [1, 2, 3]}, path)
    elif case == "missing":
        path = folder / "absent.safetensors"
    else:
        raise ValueError(case)
    return path
