"""The fp32 ONNX variant that ONNX Runtime's Core ML execution provider takes whole, in both its model formats.

ORT's mobile usability checker (``spnas.accelerators.ort_mobile``) on our fp32 ``.onnx``: the
MLProgram format takes all nodes in one partition, but the NeuralNetwork format (the EP's default)
has no ``ReduceMean``, so the global pool falls back to the CPU and the graph is cut in two.  The
pool is a mean over H and W with ``keepdims=1``, which is exactly ``GlobalAveragePool`` (in
both op lists): this variant swaps that one node, so either format keeps the whole graph.  The int8
QDQ model has no such way: neither Core ML format lists ``QuantizeLinear`` / ``DequantizeLinear``,
so each int8 tensor boundary leaves the EP (80 partitions); on iOS ship this float variant to the
Core ML EP, or the ``.mlpackage`` (W8A8) to Core ML itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from spnas.errors import SpnasError
from spnas.export import Artifact, ExportContext
from spnas.io import atomic_path

SUFFIX = "_coreml_ep.onnx"
APP = "ONNX Runtime Core ML execution provider (NeuralNetwork or MLProgram): every node in one partition"


def global_pool_as_gap(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose spatial ``ReduceMean`` (axes H, W, keepdims) is a ``GlobalAveragePool``."""
    variant = onnx.ModelProto()
    variant.CopyFrom(proto)
    graph = variant.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    means = [node for node in graph.node if node.op_type == "ReduceMean"]
    if len(means) != 1:
        raise SpnasError(f"Core ML EP variant: expected one ReduceMean (the global pool), found {len(means)}")
    mean = means[0]
    keepdims = next((a.i for a in mean.attribute if a.name == "keepdims"), 1)
    axes = sorted(int(a) % 4 for a in constants.get(mean.input[1], np.array([])).ravel()) if len(mean.input) > 1 else []
    if keepdims != 1 or axes != [2, 3]:
        raise SpnasError(f"Core ML EP variant: the ReduceMean is not a global pool (axes {axes}, keepdims {keepdims})")
    pool = helper.make_node("GlobalAveragePool", [mean.input[0]], list(mean.output), name="global_pool")
    index = list(graph.node).index(mean)
    graph.node.remove(mean)
    graph.node.insert(index, pool)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    onnx.checker.check_model(variant, full_check=True)
    return variant


def export_coreml_ep(fp32: onnx.ModelProto, ctx: ExportContext, details: dict) -> Artifact:
    """Write ``spnasnet_100_fp32_coreml_ep.onnx`` from the exported fp32 model (metadata included)."""
    ctx.progress("onnx: fp32 variant for the Core ML EP (ReduceMean -> GlobalAveragePool)")
    path = Path(ctx.out_dir) / f"spnasnet_100_fp32{SUFFIX}"
    with atomic_path(path) as tmp:
        onnx.save(global_pool_as_gap(fp32), str(tmp))
    return Artifact("onnx", "fp32", path, {**details, "app": APP, "global_pool": "GlobalAveragePool"},
                    entry={"app": "coreml_ep"})
