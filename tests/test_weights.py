"""Checkpoint loading: accepted sources and one-line refusals."""

from __future__ import annotations

import pytest
import torch
from checkpoints import BAD_CHECKPOINTS, PWNED_MARKER, write_bad_checkpoint
from safetensors.torch import save_file

import spnas
from spnas.errors import SpnasError


@pytest.fixture(scope="module")
def good_state():
    return spnas.create_model("random").state_dict()


def test_random_weights_are_seeded_and_warned():
    first, second = spnas.create_model("random"), spnas.create_model("random")
    assert first.weights_info.is_random and "NOT FOR DEPLOYMENT" in first.weights_info.warning
    torch.testing.assert_close(first.conv_stem.weight, second.conv_stem.weight)


def test_random_weights_reestimate_batchnorm(calib_pixels):
    model = spnas.create_model("random", calib_pixels=calib_pixels[:16])
    assert not torch.allclose(model.bn1.running_mean, torch.zeros_like(model.bn1.running_mean))
    assert not torch.allclose(model.bn2.running_var, torch.ones_like(model.bn2.running_var))


def test_state_dict_wrapped_in_training_checkpoint(tmp_path, good_state):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in good_state.items()}, "epoch": 3}, path)
    model = spnas.create_model(str(path))
    torch.testing.assert_close(model.conv_head.weight, good_state["conv_head.weight"])


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoints_are_refused(tmp_path, good_state, case):
    path = write_bad_checkpoint(tmp_path, case, good_state)
    with pytest.raises(SpnasError, match=BAD_CHECKPOINTS[case]) as info:
        spnas.create_model(str(path))
    assert "\n" not in str(info.value)
    assert not PWNED_MARKER.exists()


def test_hub_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setattr("spnas.weights.hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-spnas-cache")
    with pytest.raises(SpnasError, match="pass --weights path/to/model.safetensors"):
        spnas.create_model("hf-hub:timm/spnasnet_100.rmsp_in1k")


def test_auto_prefers_the_hub_cache(monkeypatch, tmp_path, good_state):
    """``auto`` loads a cached hub download without touching the network."""
    cached = tmp_path / "model.safetensors"
    save_file(good_state, cached)

    def fake_download(hub_id, local_only, filename="model.safetensors"):
        assert local_only, "auto must try the local cache before the network"
        if filename != "model.safetensors":
            raise SpnasError(f"cannot get {filename}")
        return cached

    monkeypatch.setattr("spnas.weights.hub_download", fake_download)
    model = spnas.create_model("auto")
    assert model.weights_info.source == "hf-hub:timm/spnasnet_100.rmsp_in1k"
    assert model.weights_info.warning is None


def test_auto_falls_back_to_random_with_warning(monkeypatch):
    def unavailable(hub_id, local_only, filename="model.safetensors"):
        raise SpnasError("offline")

    monkeypatch.setattr("spnas.weights.hub_download", unavailable)
    with pytest.warns(UserWarning, match="NOT FOR DEPLOYMENT"):
        model = spnas.create_model("auto")
    assert model.weights_info.is_random
