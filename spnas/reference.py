"""The PyTorch reference as a ``Runner``, so parity and benchmarks treat it like any artifact."""

from __future__ import annotations

import numpy as np

from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize


class TorchRunner:
    format = "pytorch"
    precision = "fp32"

    def __init__(self, model, spec: PreprocessSpec = DEFAULT_SPEC, batch_size: int = 16):
        self.model = model.eval()
        self.spec = spec
        self.batch_size = batch_size

    def run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                batch = torch.from_numpy(normalize(pixels[start:start + self.batch_size], self.spec))
                outputs.append(self.model(batch).numpy())
        return np.concatenate(outputs).astype(np.float32)
