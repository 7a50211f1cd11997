"""Per-layer int8 drift of a plan (``spnas-verify --explain``), on the torch int8 simulation.

The simulation computes what every format's runtime computes (``tests/test_quantize.py`` holds
each runtime to within 1 dB of it), so one drift report serves TFLite, ONNX, CoreML alike and
costs one simulated pass instead of a format-specific debugger.  For each conv and the
classifier it gives the SQNR of the simulated output (after ReLU) against the float folded net
on the same images: the error accumulated up to that layer, so where it drops is where int8
loses the signal.
"""

from __future__ import annotations

import numpy as np

from spnas.folding import FoldedNet
from spnas.parity import sqnr_db
from spnas.quantize.plan import QuantPlan
from spnas.quantize.simulate import simulate_tensors


def layer_drift(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray) -> list[dict]:
    """``[{"layer": conv name, "sqnr_db": accumulated SQNR}]`` in graph order, for normalised NCHW inputs."""
    names = [conv.name for conv in folded.layers()]
    simulated = simulate_tensors(folded, plan, x_nchw, names)
    reference = folded.activations(x_nchw)
    return [{"layer": name, "sqnr_db": sqnr_db(reference[name], simulated[name])} for name in names]
