"""``QuantPlan``: every number an int8 artifact needs, computed once, lowered by every format.

Conventions (what each format's lowering must reproduce):

- activations: per-tensor **affine int8**, ``real = (q - zero_point) * scale``, q in [-128, 127];
  a format with uint8 activations (ONNX Runtime U8S8) uses the same scale and
  ``zero_point + 128`` (``TensorQuant.as_uint8``), which is the same grid;
- weights: per-output-channel **symmetric int8**, ``scale = max|w| / 127``, q in [-127, 127],
  computed on the BatchNorm-folded weights (``spnas.folding``);
- biases: float32, already bias-corrected; a format quantizes them to int32 at
  ``input scale * weight scale`` as usual;
- ``float_layers``: timm layer names whose weights stay float (their output is still quantized);
- ``equalization``: ``{producer: per-channel factor}`` of the activation range equalization
  (``spnas.folding.rescale``): every format builds ``QuantPlan.lowered_net(folded)``, the folded
  net rescaled by it with the plan's biases, and the weight scales and tensor grids are that net's.
  A ``spnas.quant_plan/1`` file (no such field) is read as no equalization.

Tensor names are ``spnas.folding.FoldedNet.tensor_names()``: ``"input"``, every conv by timm
name (its output after ReLU), ``"blocks.S.B.add"``, ``"global_pool"``, ``"classifier"`` (logits).
The JSON (``quant_plan.json``) is this dataclass as is; ``weights_sha256`` ties it to the
weights it was computed for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError
from spnas.folding import relu_producers, rescale

PLAN_FILE = "quant_plan.json"
SCHEMA = "spnas.quant_plan/2"
READABLE_SCHEMAS = ("spnas.quant_plan/1", SCHEMA)
QMIN, QMAX = -128, 127


@dataclass(frozen=True)
class TensorQuant:
    """One activation tensor's int8 grid."""

    scale: float
    zero_point: int

    @classmethod
    def from_range(cls, low: float, high: float) -> TensorQuant:
        """The grid whose ends are ``low`` and ``high``, widened so that zero is exact."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        scale = (high - low) / (QMAX - QMIN) or 1.0
        return cls(scale, int(np.clip(round(QMIN - low / scale), QMIN, QMAX)))

    @property
    def range(self) -> tuple[float, float]:
        return (QMIN - self.zero_point) * self.scale, (QMAX - self.zero_point) * self.scale

    def as_uint8(self) -> tuple[float, int]:
        return self.scale, self.zero_point - QMIN


@dataclass(frozen=True)
class LayerQuant:
    """One conv's (or the classifier's) per-output-channel weight scales and corrected bias."""

    weight_scales: list[float]
    bias: list[float]


@dataclass(frozen=True)
class QuantPlan:
    tensors: dict[str, TensorQuant]
    layers: dict[str, LayerQuant]
    float_layers: list[str] = field(default_factory=list)
    equalization: dict[str, list[float]] = field(default_factory=dict)
    method: dict = field(default_factory=dict)  # how it was computed, for the report
    weights_sha256: str | None = None
    schema: str = SCHEMA

    def equalized(self, folded):
        """``folded`` rescaled by the plan's equalization: the float net whose tensors the plan quantizes."""
        if not self.equalization:
            return folded
        return rescale(folded, {name: np.asarray(scale) for name, scale in self.equalization.items()},
                       "quant plan equalization")

    def lowered_net(self, folded):
        """``equalized(folded)`` with the plan's corrected biases: what every format's int8 graph is built from."""
        net = self.equalized(folded)
        new = {conv.name: replace(conv, bias=np.asarray(self.layers[conv.name].bias, np.float32))
               for conv in net.layers()}
        return net.replace_layers(new, "quant plan biases")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> QuantPlan:
        data = json.loads(text)
        if data.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"not a {SCHEMA} file (schema {data.get('schema')!r})")
        return cls(tensors={k: TensorQuant(float(v["scale"]), int(v["zero_point"]))
                            for k, v in data["tensors"].items()},
                   layers={k: LayerQuant([float(s) for s in v["weight_scales"]], [float(b) for b in v["bias"]])
                           for k, v in data["layers"].items()},
                   float_layers=list(data["float_layers"]),
                   equalization={k: [float(s) for s in v] for k, v in data.get("equalization", {}).items()},
                   method=dict(data["method"]), weights_sha256=data["weights_sha256"])

    def check(self, folded, weights_sha256: str | None = None) -> None:
        """Refuse a plan made for other weights or another graph, in one line."""
        if weights_sha256 and self.weights_sha256 and weights_sha256 != self.weights_sha256:
            raise SpnasError(f"quant plan was computed for weights sha256 {self.weights_sha256[:12]}..., "
                             f"not these ({weights_sha256[:12]}...)")
        names = folded.tensor_names()
        if list(self.tensors) != names or list(self.layers) != [conv.name for conv in folded.layers()]:
            raise SpnasError("quant plan does not match the SPNasNet graph (tensor or layer names differ)")
        for conv in folded.layers():
            layer = self.layers[conv.name]
            if len(layer.weight_scales) != conv.weight.shape[0] or len(layer.bias) != conv.weight.shape[0]:
                raise SpnasError(f"quant plan layer {conv.name}: wrong number of channels")
        producers = relu_producers(folded)
        for name, scale in self.equalization.items():
            if producers.get(name) != len(scale) or not all(s > 0 for s in scale):
                raise SpnasError(f"quant plan equalization {name}: not a ReLU-separated layer's positive "
                                 "per-channel factors")
        bad = [name for name, t in self.tensors.items() if not (t.scale > 0 and QMIN <= t.zero_point <= QMAX)]
        if bad:
            raise SpnasError(f"quant plan: invalid scale or zero point for {', '.join(bad)}")


def save_plan(plan: QuantPlan, out_dir: str | Path) -> Path:
    """Write ``quant_plan.json`` into ``out_dir`` atomically."""
    from spnas.io import atomic_write_text

    return atomic_write_text(Path(out_dir) / PLAN_FILE, plan.to_json())


def load_plan(path: str | Path) -> QuantPlan:
    """Read a ``quant_plan.json``; a missing or malformed file is a one-line error."""
    path = Path(path)
    try:
        return QuantPlan.from_json(path.read_text())
    except OSError as exc:
        raise SpnasError(f"--plan {path}: cannot read ({exc.strerror})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise SpnasError(f"--plan {path}: not a quant plan ({exc})") from exc
