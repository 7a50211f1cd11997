"""Parity on the phone's own CPU kernels: TFLite artifacts on aarch64 LiteRT under qemu-user.

``verify_arm64(artifact, pixels, reference)`` returns the report's ``arm64`` block;
``prepare_env()`` readies (and caches) the emulated environment it runs in; ``tiers.verify_tiers``
runs .tflite, .onnx and .pte artifacts on emulated x86 and Arm CPU tiers (``spnas-verify --cpu``).
"""

from spnas.arm64.env import cache_state, prepare_env
from spnas.arm64.verify import summary_table, verify_arm64

__all__ = ["cache_state", "prepare_env", "summary_table", "verify_arm64"]
