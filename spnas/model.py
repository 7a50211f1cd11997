"""PyTorch reference SPNasNet with timm's exact module and parameter names.

State dicts of ``timm.create_model('spnasnet_100')`` load here with ``strict=True``
(386 entries), and for equal weights the outputs equal timm's up to float rounding.
timm fuses activation into ``BatchNormAct2d``; we keep plain ``nn.BatchNorm2d`` plus
a separate ``nn.ReLU`` so the state-dict keys stay identical while the structure is
obvious to exporters.
"""

from __future__ import annotations

import torch
from torch import nn

from spnas.arch import BN_EPS, NUM_FEATURES, SPNASNET_100_ARCH, STEM_SIZE, BlockSpec, decode_arch, feature_stages
from spnas.classes import IMAGENET_CLASSES


def _conv(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    padding = ((stride - 1) + (kernel_size - 1)) // 2
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)


class DepthwiseSeparableConv(nn.Module):
    """timm's ``ds`` block: dw conv -> bn -> relu -> pw conv -> bn (no pw activation)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.has_residual = spec.has_residual
        self.conv_dw = _conv(spec.in_chs, spec.in_chs, spec.kernel_size, spec.stride, groups=spec.in_chs)
        self.bn1 = nn.BatchNorm2d(spec.in_chs, eps=BN_EPS)
        self.act = nn.ReLU()
        self.conv_pw = _conv(spec.in_chs, spec.out_chs, 1)
        self.bn2 = nn.BatchNorm2d(spec.out_chs, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return out + x if self.has_residual else out


class InvertedResidual(nn.Module):
    """timm's ``ir`` block: pw expand -> bn+relu -> dw -> bn+relu -> pw linear -> bn."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        mid = spec.mid_chs
        self.has_residual = spec.has_residual
        self.conv_pw = _conv(spec.in_chs, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.conv_dw = _conv(mid, mid, spec.kernel_size, spec.stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.conv_pwl = _conv(mid, spec.out_chs, 1)
        self.bn3 = nn.BatchNorm2d(spec.out_chs, eps=BN_EPS)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv_pw(x)))
        out = self.act(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_residual else out


BLOCK_TYPES = {"ds": DepthwiseSeparableConv, "ir": InvertedResidual}


class SPNasNet(nn.Module):
    """SPNasNet built from an arch description, timm-compatible.

    ``num_classes=0`` gives pooled (B, 1280) features; ``features_only=True`` drops the
    head and returns the five stage maps (16, 24, 40, 96, 320 channels at strides 2..32).
    """

    def __init__(self, arch=SPNASNET_100_ARCH, *, num_classes: int = IMAGENET_CLASSES, features_only: bool = False,
                 stem_size: int = STEM_SIZE, num_features: int = NUM_FEATURES):
        super().__init__()
        self.block_specs = decode_arch(arch, stem_size)
        self.num_classes = num_classes
        self.num_features = num_features
        self.features_only = features_only
        self.conv_stem = _conv(3, stem_size, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(stem_size, eps=BN_EPS)
        self.act = nn.ReLU()
        stages: list[list[nn.Module]] = [[] for _ in arch]
        for spec in self.block_specs:
            stages[spec.stage].append(BLOCK_TYPES[spec.block_type](spec))
        self.blocks = nn.Sequential(*(nn.Sequential(*stage) for stage in stages))
        self.feature_stages = feature_stages(self.block_specs)
        if features_only:
            return
        self.conv_head = _conv(self.block_specs[-1].out_chs, num_features, 1)
        self.bn2 = nn.BatchNorm2d(num_features, eps=BN_EPS)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act(self.bn2(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self.bn1(self.conv_stem(x)))
        maps = []
        for stage, blocks in enumerate(self.blocks):
            x = blocks(x)
            if stage in self.feature_stages:
                maps.append(x)
        return maps

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_feature_maps(x)
        return self.forward_head(self.forward_features(x))


def init_weights(model: nn.Module, seed: int) -> None:
    """timm's EfficientNet init (``_init_weight_goog``), seeded for reproducibility."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            module.weight.data.normal_(0, (2.0 / fan_out) ** 0.5, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, nn.Linear):
            bound = 1.0 / module.weight.size(0) ** 0.5
            module.weight.data.uniform_(-bound, bound, generator=generator)
            module.bias.data.zero_()
