"""Model Explorer node data of the per-layer int8 drift (``spnas-verify --explain --node-data FILE``).

Model Explorer (google-ai-edge/model-explorer) overlays a value per node from a JSON file in its
``GraphNodeData`` shape: ``{"name", "results": {key: {"value"}}, "gradient": [{"stop", "bgColor"}]}``,
where a key is a node id or one of the node's output tensor names.  Keys are the artifact's own
names, so the overlay lands on the graph: for ``.tflite`` the output tensor of each layer's
conv / FC op (the ``tensor_name`` Model Explorer's TFLite adapter shows), for ``.onnx`` the name
of the layer's Conv / Gemm node.  Every numeric field of a drift row is written: the accumulated
SQNR to FILE, any other per-layer figure (e.g. a local SQNR) to ``FILE``'s stem + ``.FIELD.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from spnas.errors import SpnasError

# Low SQNR (most drift) red, high green: Model Explorer maps the minimum value to stop 0.
GRADIENT = [{"stop": 0, "bgColor": "#d7191c"}, {"stop": 0.5, "bgColor": "#ffffbf"}, {"stop": 1, "bgColor": "#1a9641"}]
ACCUMULATED = "sqnr_db"


def layer_keys(artifact: str | Path, fmt: str, layers: list[str]) -> dict[str, str]:
    """timm layer name -> the artifact's node key for it."""
    if fmt == "tflite":
        from spnas.export.tflite import layer_tensor_names

        found = layer_tensor_names(artifact, layers)
    elif fmt == "onnx":
        import onnx

        names = {node.name for node in onnx.load(str(artifact), load_external_data=False).graph.node}
        found = {layer: layer for layer in layers if layer in names}
    else:
        raise SpnasError(f"--node-data: Model Explorer node data for {fmt} artifacts is not supported "
                         "(.tflite and .onnx are)")
    if missing := [layer for layer in layers if layer not in found]:
        raise SpnasError(f"{artifact}: no node for layer(s) {', '.join(missing[:5])}")
    return found


def node_data(drift: list[dict], keys: dict[str, str], field: str, artifact_name: str) -> dict:
    """One ``GraphNodeData`` of one numeric drift field."""
    results = {keys[row["layer"]]: {"value": float(row[field])} for row in drift
               if isinstance(row.get(field), (int, float))}
    return {"name": f"spnas {field} ({artifact_name})", "results": results, "gradient": GRADIENT}


def numeric_fields(drift: list[dict]) -> list[str]:
    """The accumulated SQNR first, then every other numeric per-layer figure drift returns."""
    fields = {name for row in drift for name, value in row.items()
              if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return [ACCUMULATED, *sorted(fields - {ACCUMULATED})]


def write_node_data(path: str | Path, artifact: str | Path, fmt: str, drift: list[dict]) -> list[Path]:
    """Write one node-data file per numeric drift field; returns the paths written."""
    from spnas.io import atomic_write_text

    path, artifact = Path(path), Path(artifact)
    keys = layer_keys(artifact, fmt, [row["layer"] for row in drift])
    written = []
    for field in numeric_fields(drift):
        target = path if field == ACCUMULATED else path.with_name(f"{path.stem}.{field}.json")
        atomic_write_text(target, json.dumps(node_data(drift, keys, field, artifact.name), indent=1) + "\n")
        written.append(target)
    return written
