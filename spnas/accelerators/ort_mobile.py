"""ORT's NNAPI and Core ML execution providers: ORT's own mobile usability checker, per partition.

``python -m onnxruntime.tools.check_onnx_model_mobile_usability MODEL`` optimises the model at
ORT's BASIC level (what an app's session does before it partitions), infers shapes, then groups
the nodes each EP's published op list takes into partitions.  This module runs the same
functions (``onnxruntime.tools.mobile_helpers.usability_checker``) on the same optimised model
and keeps both the counts and the checker's own log lines.  Core ML is checked for both model
formats the EP can build: NeuralNetwork (its default) and MLProgram (``ModelFormat=MLProgram``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from spnas.accelerators.schema import entry, log_lines

# accelerator -> (EP name in the checker's words, the EP's supported-op list beside the checker)
EPS = {"nnapi": ("NNAPI", None),
       "coreml_neuralnetwork": ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
       "coreml_mlprogram": ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md")}
CORE_ML_MAX_RANK = 5  # the rank limit the checker applies to Core ML


def check_ort_mobile(path: str | Path) -> dict:
    """``{"nnapi": entry, "coreml_neuralnetwork": entry, "coreml_mlprogram": entry}`` of one ``.onnx``."""
    import onnxruntime
    from onnxruntime.tools.mobile_helpers import usability_checker as usability
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "model.onnx"
        optimize_model(Path(path), optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
    counts: dict[str, int] = {}
    for node in model.graph.node:  # keyed as the checker names ops: "domain:op_type"
        key = f"{node.domain or 'ai.onnx'}:{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    results = {}
    for name, (ep_name, op_list) in EPS.items():
        info = (usability.check_nnapi_partitions(model, True) if op_list is None
                else usability.check_coreml_partitions(model, True, op_list))
        logger = logging.getLogger(f"spnas.accelerators.{name}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        with log_lines(logger) as lines:
            info.print_analysis(logger, ep_name)
            logger.info(f"Model should perform well with {ep_name} as is: {info.suitability().name}")
        unsupported = [{"op": op, "nodes": counts.get(op, 0), "reason": f"not in ORT's {ep_name} EP op list"}
                       for op in sorted(info.unsupported_ops)]
        unsupported += [{"op": op, "nodes": counts.get(op, 0), "reason": f"input rank above {CORE_ML_MAX_RANK}"}
                        for op in sorted(info.ops_with_unsupported_rank)]
        results[name] = entry(f"onnxruntime {onnxruntime.__version__} check_onnx_model_mobile_usability ({ep_name})",
                              info.num_nodes, info.num_supported_nodes, info.num_partitions, unsupported,
                              lines, partition_sizes=[len(group) for group in info.supported_groups],
                              suitability=info.suitability().name)
    return results
