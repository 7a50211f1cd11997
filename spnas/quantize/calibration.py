"""The calibration data protocol: normalised NCHW batches, streamed, as many passes as needed.

In the spirit of ONNX Runtime's ``CalibrationDataReader`` (``get_next() -> batch or None``),
with ``rewind()`` because range setting reads the images twice (min/max, then histograms)
and bias correction once more.  Any object with these two methods can calibrate a plan, so an
image pipeline other than ``spnas.images`` (a video stream, a dataset on disk) plugs in here.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize

BATCH_SIZE = 8  # bounds memory (one batch of activations at a time); 4-8 run fastest per image


class CalibrationReader(Protocol):
    def get_next(self) -> np.ndarray | None:
        """The next float32 NCHW batch, normalised as the model expects; None when exhausted."""

    def rewind(self) -> None:
        """Start again from the first batch."""


class PixelBatches:
    """``CalibrationReader`` over uint8 (N, H, W, 3) crops, normalised with ``spec`` batch by batch."""

    def __init__(self, pixels: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC, batch_size: int = BATCH_SIZE):
        self.pixels, self.spec, self.batch_size, self.start = pixels, spec, batch_size, 0

    def __len__(self) -> int:
        return len(self.pixels)

    def get_next(self) -> np.ndarray | None:
        if self.start >= len(self.pixels):
            return None
        batch = normalize(self.pixels[self.start:self.start + self.batch_size], self.spec)
        self.start += self.batch_size
        return batch

    def rewind(self) -> None:
        self.start = 0


def batches(reader: CalibrationReader):
    """Iterate a reader from its first batch."""
    reader.rewind()
    while (batch := reader.get_next()) is not None:
        yield batch
