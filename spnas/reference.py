"""The PyTorch reference as a ``Runner``, so parity and benchmarks treat it like any artifact."""

from __future__ import annotations

import numpy as np

from spnas.export import RunnerBase
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize


class TorchRunner(RunnerBase):
    format = "pytorch"
    precision = "fp32"

    def __init__(self, model, spec: PreprocessSpec = DEFAULT_SPEC, batch_size: int = 16):
        self.model = model.eval()
        self.spec = spec
        self.batch_size = batch_size

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        return normalize(pixels, self.spec)

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(prepared), self.batch_size):
                outputs.append(self.model(torch.from_numpy(prepared[start:start + self.batch_size])).numpy())
        return np.concatenate(outputs).astype(np.float32)
