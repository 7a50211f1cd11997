"""Where int8 loses the signal, on the torch int8 simulation of a plan (``spnas-verify --explain``,
``report.json``'s ``int8_plan``, the fallback's ranking).

The simulation computes what every format's runtime computes (``tests/test_quantize.py`` holds
each runtime to within 1 dB of it), so one analysis serves TFLite, ONNX, CoreML alike and costs
simulated passes instead of a format-specific debugger.

- ``body_sqnr``: the simulation's SQNR against float at the pooled features (``global_pool``, the
  body every head reads) and at the logits.  A few-class head cannot average the body's noise
  away as a 1000-way head does, so the pooled figure says what int8 keeps of the network
  whatever head a fine-tune puts on it.
- ``layer_drift``: for each conv and the classifier, the *accumulated* SQNR (simulated output
  after ReLU against float on the same images: everything lost up to that layer) and the
  *local* SQNR (that layer alone quantized, its weights, bias and output grid, fed the float
  net's own input to it, which is the loss the layer adds).  A layer with a poor accumulated
  but a good local figure only inherits upstream error; keeping it in float would not help.
"""

from __future__ import annotations

import numpy as np

from spnas.folding import FoldedNet, _apply
from spnas.parity import compare, sqnr_db
from spnas.quantize.plan import QuantPlan
from spnas.quantize.simulate import Int8Ops, conv_inputs, fake_quant, simulate_tensors

POOLED = "global_pool"


def float_tensors(folded: FoldedNet, x_nchw: np.ndarray, names, batch: int = 16) -> dict[str, np.ndarray]:
    """``{name: values}`` of the float folded net's tensors ``names``, batch by batch (bounded memory)."""
    kept: dict[str, list] = {name: [] for name in names}
    for start in range(0, len(x_nchw), batch):
        values = folded.activations(x_nchw[start:start + batch])
        for name in names:
            kept[name].append(values[name])
    return {name: np.concatenate(parts) for name, parts in kept.items()}


def body_sqnr(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray) -> tuple[dict, np.ndarray]:
    """``({"pooled_sqnr_db", "logit_sqnr_db", "top1_agreement"}, simulated logits)`` of the plan's simulation
    against the float net on normalised NCHW inputs."""
    names = [POOLED, folded.classifier.name]
    simulated = simulate_tensors(folded, plan, x_nchw, names)
    reference = float_tensors(folded, x_nchw, names)
    logits = compare(reference[folded.classifier.name], simulated[folded.classifier.name])
    return ({"pooled_sqnr_db": sqnr_db(reference[POOLED], simulated[POOLED]), "logit_sqnr_db": logits["sqnr_db"],
             "top1_agreement": logits["top1_agreement"]}, simulated[folded.classifier.name])


def local_sqnr(folded: FoldedNet, plan: QuantPlan, reference: dict[str, np.ndarray]) -> dict[str, float]:
    """``{conv name: SQNR}`` of each layer run alone in int8 (its input rounded to its grid, its weights and
    bias as lowered, its output rounded) on the float net's input to it (``reference``: the float net's
    ``activations``), against its float output."""
    import torch

    int8 = Int8Ops(folded, plan)
    inputs = conv_inputs(folded)
    local = {}
    with torch.inference_mode():
        for conv in folded.layers():
            float_in = torch.from_numpy(reference[inputs[conv.name]])
            quantized_in = fake_quant(float_in, plan.tensors[inputs[conv.name]])
            out = fake_quant(_apply(int8.layers[conv.name], quantized_in), plan.tensors[conv.name])
            local[conv.name] = sqnr_db(reference[conv.name], out.numpy())
    return local


def layer_drift(folded: FoldedNet, plan: QuantPlan, x_nchw: np.ndarray) -> list[dict]:
    """``[{"layer", "sqnr_db": accumulated SQNR, "local_sqnr_db": what the layer adds}]`` in graph order,
    for normalised NCHW inputs."""
    names = [conv.name for conv in folded.layers()]
    simulated = simulate_tensors(folded, plan, x_nchw, names)
    reference = plan.equalized(folded).activations(x_nchw)  # its inner tensors are the plan's
    local = local_sqnr(folded, plan, reference)
    return [{"layer": name, "sqnr_db": sqnr_db(reference[name], simulated[name]), "local_sqnr_db": local[name]}
            for name in names]
