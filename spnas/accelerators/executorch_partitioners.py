"""ExecuTorch delegates of a ``.pte``: the XNNPACK partition its export lowered, and the Vulkan and
Core ML partitioners, which both run on Linux (they tag the edge graph; nothing is compiled).

XNNPACK's entry restates the lowering's own delegation counts (``spnas.export.executorch.lower``:
ExecuTorch's ``get_delegation_info``).  Vulkan (Android GPU) and Core ML (Apple GPU and Neural
Engine) are asked the same question on the same graph before lowering: which nodes would you
take, in how many partitions.  Their skip reasons (Vulkan logs one per refused node) are kept.
Each costs a ``to_edge`` of the graph and a partition pass, so the export runs them only with
``--pte-partitioners``.  The others cannot run here: Qualcomm's QNN partitioner asks the QNN SDK's
libraries (a separate licensed install) about each op, MPS needs macOS, and the Arm, MediaTek,
Samsung and OpenVINO partitioners import their vendor toolchains.
"""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import version

from spnas.accelerators.schema import entry, log_lines, unchecked

# Nodes that stay outside a delegate without running a kernel: the delegate call and its output unpacking.
GLUE_OPS = ("getitem", "executorch_call_delegate")
MESSAGES = 20  # the partitioner's last log lines kept (Vulkan logs one per refused node; reasons are per op too)
PARTITIONERS = {"vulkan": ("executorch.backends.vulkan.partitioner.vulkan_partitioner", "VulkanPartitioner"),
                "coreml": ("executorch.backends.apple.coreml.partition", "CoreMLPartitioner")}


def xnnpack_entry(delegation: dict) -> dict:
    """The XNNPACK delegate's entry from the lowering's delegation counts."""
    outside = delegation["non_delegated_ops"]
    unsupported = [{"op": op, "reason": "portable kernel outside the delegate"}
                   for op in delegation["portable_kernels"]]
    words = [f"{delegation['delegated_ops']} ops delegated to XNNPACK in {delegation['delegated_subgraphs']} "
             f"subgraph(s), {outside} outside (executorch.devtools.backend_debug.get_delegation_info)"]
    return entry(f"executorch {version('executorch')} XnnpackPartitioner", delegation["delegated_ops"] + outside,
                 delegation["delegated_ops"], delegation["delegated_subgraphs"], unsupported, words)


def partition_entries(exported) -> dict:
    """``{"vulkan": entry, "coreml": entry}`` of a ``torch.export`` program (fp32, or PT2E int8)."""
    with warnings.catch_warnings():  # EXIR's deprecation notes are for its own developers
        warnings.simplefilter("ignore")
        return _partition_entries(exported)


def _partition_entries(exported) -> dict:
    import copy
    import importlib

    from executorch.exir import to_edge


    program = to_edge(exported).exported_program()
    operators = [node for node in program.graph.nodes
                 if node.op == "call_function" and not any(glue in str(node.target) for glue in GLUE_OPS)]
    results = {}
    for name, (module, cls) in PARTITIONERS.items():
        checker = f"executorch {version('executorch')} {cls}"
        try:
            partitioner = getattr(importlib.import_module(module), cls)()
        except ImportError as exc:
            results[name] = unchecked(checker, f"cannot import {module}: {exc}")
            continue
        with log_lines(logging.getLogger()) as lines:
            tagged = partitioner.partition(copy.deepcopy(program)).tagged_exported_program
        tags = {node.name: node.meta.get("delegation_tag") for node in tagged.graph.nodes}
        refused = [node for node in operators if not tags.get(node.name)]
        reasons = {}
        for node in refused:
            reasons.setdefault(str(node.target), _reason(lines, node.name))
        unsupported = [{"op": op, "nodes": sum(str(n.target) == op for n in refused), "reason": reason}
                       for op, reason in sorted(reasons.items())]
        partitions = len({tag for tag in tags.values() if tag})
        results[name] = entry(checker, len(operators), len(operators) - len(refused), partitions, unsupported,
                              lines[-MESSAGES:])
    return results


def _reason(lines: list[str], node_name: str) -> str:
    """The partitioner's own skip reason for a node, where it logs one."""
    return next((line for line in lines if f"{node_name}" in line and "skipping" in line),
                "not tagged by the partitioner")

