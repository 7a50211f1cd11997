"""The reference model against timm's layout and an independent functional forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import spnas
from spnas.arch import decode_arch, decode_block_string

# timm's spnasnet_100, written out by hand (not derived from spnas.arch): the first block of
# these stages has stride 2; blocks.0.0 and blocks.6.0 are "noskip".
STRIDE2_BLOCKS = {"blocks.1.0", "blocks.2.0", "blocks.3.0", "blocks.5.0"}
NOSKIP_BLOCKS = {"blocks.0.0", "blocks.6.0"}


def conv(x, weight, stride=1):
    k = weight.shape[-1]
    groups = x.shape[1] if weight.shape[1] == 1 and weight.shape[0] == x.shape[1] and k > 1 else 1
    return F.conv2d(x, weight, stride=stride, padding=k // 2, groups=groups)


def bn(x, sd, prefix):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=1e-5)


def functional_forward(sd: dict, x: torch.Tensor) -> dict:
    """timm's SPNasNet from raw tensors: returns stage maps, features, pre-logits and logits."""
    x = F.relu(bn(conv(x, sd["conv_stem.weight"], 2), sd, "bn1"))
    names = sorted({".".join(k.split(".")[:3]) for k in sd if k.startswith("blocks.")},
                   key=lambda n: tuple(int(p) for p in n.split(".")[1:]))
    stage_out = {}
    for name in names:
        stride = 2 if name in STRIDE2_BLOCKS else 1
        shortcut = x
        if name == "blocks.0.0":
            x = F.relu(bn(conv(x, sd[f"{name}.conv_dw.weight"], stride), sd, f"{name}.bn1"))
            x = bn(conv(x, sd[f"{name}.conv_pw.weight"]), sd, f"{name}.bn2")
        else:
            x = F.relu(bn(conv(x, sd[f"{name}.conv_pw.weight"]), sd, f"{name}.bn1"))
            x = F.relu(bn(conv(x, sd[f"{name}.conv_dw.weight"], stride), sd, f"{name}.bn2"))
            x = bn(conv(x, sd[f"{name}.conv_pwl.weight"]), sd, f"{name}.bn3")
        if name not in NOSKIP_BLOCKS and stride == 1 and x.shape == shortcut.shape:
            x = x + shortcut
        stage_out[int(name.split(".")[1])] = x
    features = F.relu(bn(conv(x, sd["conv_head.weight"]), sd, "bn2"))
    pooled = features.mean(dim=(2, 3))
    return {"maps": [stage_out[s] for s in (0, 1, 2, 4, 6)], "features": features, "pre_logits": pooled,
            "logits": F.linear(pooled, sd["classifier.weight"], sd["classifier.bias"])}


def perturbed_state_dict(seed: int = 1) -> dict:
    """A timm-layout checkpoint with non-trivial BN statistics, as a trained one has."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in spnas.create_model("random").state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state[key] = value + 0.1 * torch.randn(value.shape, generator=generator)
    return state


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    state = perturbed_state_dict()
    save_file(state, folder / "model.safetensors")
    torch.save(state, folder / "model.pth")
    return state, folder


def test_state_dict_matches_timm_layout():
    state = spnas.create_model("random").state_dict()
    assert len(state) == 386
    assert {"conv_stem.weight", "bn1.running_var", "blocks.0.0.conv_dw.weight", "blocks.0.0.bn2.bias",
            "blocks.1.0.conv_pwl.weight", "blocks.6.0.bn3.weight", "conv_head.weight", "bn2.weight",
            "classifier.weight", "classifier.bias"} <= set(state)
    assert state["blocks.5.3.conv_dw.weight"].shape == (1152, 1, 5, 5)
    assert state["classifier.weight"].shape == (1000, 1280)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 4421616


@pytest.mark.parametrize("filename", ["model.safetensors", "model.pth"])
def test_checkpoint_outputs_match_functional_forward(checkpoint_files, filename):
    state, folder = checkpoint_files
    model = spnas.create_model(str(folder / filename))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = functional_forward(state, x)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(features, expected["features"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), expected["pre_logits"],
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x), expected["logits"], rtol=1e-4, atol=1e-4)
    assert features.shape == (2, 1280, 7, 7)


def test_num_classes_zero_and_features_only(checkpoint_files):
    state, folder = checkpoint_files
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    expected = functional_forward(state, x)
    with torch.no_grad():
        pooled = spnas.create_model(str(folder / "model.safetensors"), num_classes=0)(x)
        maps = spnas.create_model(str(folder / "model.safetensors"), features_only=True)(x)
    torch.testing.assert_close(pooled, expected["pre_logits"], rtol=1e-4, atol=1e-4)
    assert pooled.shape == (1, 1280)
    assert [m.shape[1] for m in maps] == [16, 24, 40, 96, 320]
    assert [224 // m.shape[-1] for m in maps] == [2, 4, 8, 16, 32]
    for got, want in zip(maps, expected["maps"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fixture_weights_load_and_classify(fixture_model, reference_logits, labels_csv):
    import csv

    with open(labels_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))[600:640]
    truth = torch.tensor([int(r["class_index"]) for r in rows])
    accuracy = (torch.from_numpy(reference_logits).argmax(1) == truth).float().mean().item()
    assert accuracy > 0.8  # the fixture was trained on these images; random weights score ~0


def test_reference_runner_computes_the_model_in_channels_last_and_leaves_it_alone(fixture_model, parity_pixels,
                                                                                   reference_logits):
    """The reference runs a channels-last copy (faster depthwise convolutions): the caller's model keeps its NCHW
    memory, and the logits are the NCHW forward pass's within float32 rounding, with the same top-1."""
    from spnas.preprocess import normalize

    assert all(p.is_contiguous() for p in fixture_model.parameters())
    with torch.inference_mode():
        nchw = fixture_model.eval()(torch.from_numpy(normalize(parity_pixels))).numpy()
    assert (reference_logits.argmax(1) == nchw.argmax(1)).all()
    torch.testing.assert_close(torch.from_numpy(reference_logits), torch.from_numpy(nchw), rtol=0, atol=1e-4)


def test_block_string_parsing():
    assert decode_block_string("ir_r3_k5_s2_e6_c40") == {
        "block_type": "ir", "repeat": 3, "kernel_size": 5, "stride": 2, "exp_ratio": 6.0, "skip": True,
        "out_chs": 40}
    assert decode_block_string("ds_r1_k3_s1_c16_noskip")["skip"] is False
    with pytest.raises(ValueError, match="unknown option"):
        decode_block_string("ir_r1_q3_c16")
    blocks = decode_arch()
    assert len(blocks) == 21 and sum(b.has_residual for b in blocks) == 14
