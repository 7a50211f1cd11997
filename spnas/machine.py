"""What this machine is: recorded with every figure, since kernels (and so int8 results and latency) depend on it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

SIMD_FLAGS = {"sse4_1", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_int8", "asimd", "asimddp", "i8mm", "sve"}


def machine_facts() -> dict:
    facts = {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
             "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                facts["cpu_model"] = value.strip()
            elif key.strip() == "flags":  # the ISA extensions XNNPACK and ONNX Runtime pick their kernels by
                facts["cpu_simd"] = sorted(set(value.split()) & SIMD_FLAGS)
            if "cpu_model" in facts and "cpu_simd" in facts:
                break
    except OSError:
        pass
    return facts
