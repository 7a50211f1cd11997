"""Architecture description of SPNasNet, shared by every backend.

The PyTorch reference, the TensorFlow/TFLite graph builder and the Pixel 1 latency
model all read this one description, so they cannot drift apart.

It follows timm's ``_gen_spnasnet`` (timm/models/efficientnet.py): block strings in
timm's arch-string syntax, ``stem_size=32``, ``num_features=1280``, ReLU, BatchNorm
eps 1e-5 and symmetric PyTorch padding ``k // 2``.  A ``ds`` block is timm's
``DepthwiseSeparableConv`` (dw -> bn+relu -> pw -> bn, no activation after pw); an
``ir`` block is ``InvertedResidual`` (pw -> bn+relu -> dw -> bn+relu -> pwl -> bn).
A block has a residual connection when stride is 1, in == out channels and the
string has no ``noskip``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPNASNET_100_ARCH = (
    ("ds_r1_k3_s1_c16_noskip",),
    ("ir_r3_k3_s2_e3_c24",),
    ("ir_r1_k5_s2_e6_c40", "ir_r3_k3_s1_e3_c40"),
    ("ir_r1_k5_s2_e6_c80", "ir_r3_k3_s1_e3_c80"),
    ("ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"),
    ("ir_r4_k5_s2_e6_c192",),
    ("ir_r1_k3_s1_e6_c320_noskip",),
)
STEM_SIZE = 32
NUM_FEATURES = 1280
BN_EPS = 1e-5
INPUT_SIZE = 224  # the paper's (and the ImageNet checkpoint's) resolution
MAX_STRIDE = 32  # the last feature map is input / 32: the smallest input the net supports


@dataclass(frozen=True)
class BlockSpec:
    """One block, with its timm module path (``blocks.S.B``) and resolved channels."""

    stage: int
    index: int
    block_type: str  # "ds" or "ir"
    kernel_size: int
    stride: int
    in_chs: int
    out_chs: int
    exp_ratio: float
    skip: bool

    @property
    def name(self) -> str:
        return f"blocks.{self.stage}.{self.index}"

    @property
    def mid_chs(self) -> int:
        return self.in_chs if self.block_type == "ds" else int(self.in_chs * self.exp_ratio)

    @property
    def has_residual(self) -> bool:
        return self.skip and self.stride == 1 and self.in_chs == self.out_chs

    @property
    def padding(self) -> int:
        """PyTorch symmetric padding, as timm's ``get_padding`` for dilation 1."""
        return ((self.stride - 1) + (self.kernel_size - 1)) // 2


_OPTION = re.compile(r"([a-z]+)(\d+(?:\.\d+)?)$")


def decode_block_string(block_string: str) -> dict:
    """Parse a timm block string such as ``ir_r3_k5_s2_e6_c40`` into its fields."""
    block_type, *options = block_string.split("_")
    if block_type not in ("ds", "ir"):
        raise ValueError(f"unsupported block type {block_type!r} in {block_string!r}")
    fields = {"block_type": block_type, "repeat": 1, "kernel_size": 3, "stride": 1,
              "exp_ratio": 1.0, "skip": True}
    keys = {"r": "repeat", "k": "kernel_size", "s": "stride", "e": "exp_ratio", "c": "out_chs"}
    for option in options:
        if option == "noskip":
            fields["skip"] = False
            continue
        match = _OPTION.match(option)
        if not match or match.group(1) not in keys:
            raise ValueError(f"unknown option {option!r} in block string {block_string!r}")
        key = keys[match.group(1)]
        fields[key] = float(match.group(2)) if key == "exp_ratio" else int(match.group(2))
    if "out_chs" not in fields:
        raise ValueError(f"block string {block_string!r} has no channel count (c..)")
    return fields


def decode_arch(arch=SPNASNET_100_ARCH, stem_size: int = STEM_SIZE) -> list[BlockSpec]:
    """Expand an arch definition into the flat list of blocks, in execution order."""
    blocks = []
    in_chs = stem_size
    for stage, block_strings in enumerate(arch):
        index = 0
        for block_string in block_strings:
            fields = decode_block_string(block_string)
            for repeat in range(fields["repeat"]):
                blocks.append(BlockSpec(
                    stage=stage, index=index, block_type=fields["block_type"],
                    kernel_size=fields["kernel_size"],
                    stride=fields["stride"] if repeat == 0 else 1,
                    in_chs=in_chs, out_chs=fields["out_chs"],
                    exp_ratio=fields["exp_ratio"], skip=fields["skip"]))
                in_chs = fields["out_chs"]
                index += 1
    return blocks


def feature_stages(blocks: list[BlockSpec]) -> list[int]:
    """Stages whose output is a ``features_only`` map: the last stage at each stride.

    For SPNasNet these are stages 0, 1, 2, 4, 6 (16, 24, 40, 96, 320 channels at
    strides 2, 4, 8, 16, 32), as timm's ``feature_info``.
    """
    stride, last_at_stride = 2, {}
    for block in blocks:
        stride *= block.stride
        last_at_stride[stride] = block.stage
    return sorted(last_at_stride.values())
