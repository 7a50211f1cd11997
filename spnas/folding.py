"""BatchNorm folding and post-training fidelity transforms of SPNasNet, framework-neutral.

Every exporter that builds its own graph (TFLite here, ONNX optionally) starts from the same
folded description, so "BN folded, ReLU fused" is computed once and checked once.  A
``FoldedNet`` holds, per convolution, float32 numpy ``weight`` (PyTorch layout: ``(out,
in/groups, kh, kw)``, the classifier ``(out, in)``) and ``bias``, plus stride, symmetric
PyTorch padding, groups and whether a ReLU follows; it is walked in execution order and keyed
by timm module names (``conv_stem``, ``blocks.3.1.conv_dw``, ``conv_head``, ``classifier``).

API (all functions return new objects, inputs are never modified):

- ``fold_batchnorm(model) -> FoldedNet``: an eval ``spnas.model.SPNasNet`` with BN folded
  into conv weight/bias, structure from ``spnas.arch.decode_arch``;
- ``FoldedNet.walk(x, ops)``: **the one walk** over the architecture (stem, blocks with their
  residual adds, head, global pool, classifier).  ``ops`` (a ``NetOps``) says what a conv, an
  add and the pool are and what happens at every tensor an int8 model quantizes (``"input"``,
  each conv output after its ReLU, ``"blocks.S.B.add"``, ``"global_pool"``, ``"classifier"``):
  the float reference (``TorchOps``), the int8 simulation and bias correction
  (``spnas.quantize``) and the TF graph builder (``spnas.export.tflite``) are all this walk;
- ``FoldedNet.forward(x_nchw) -> logits`` and ``FoldedNet.activations(x_nchw)`` (every tensor
  above), in float32 torch: the reference the transforms are checked against;
  ``FoldedNet.to_state_dict()`` gives ``{name.weight, name.bias}`` numpy arrays;
- ``equalization_scales(folded, activation_ranges=None) -> {producer: per-channel factor}``:
  cross-layer equalization (Nagel et al. 2019, section 4.1) over every conv -> ReLU -> conv pair,
  and with ``activation_ranges`` (per-channel maxima of conv outputs, from ``channel_ranges``)
  the rescaling of every ReLU output so its weak channels use more of the per-tensor int8 range;
  ``rescale(folded, scales)`` applies such factors (the float function is unchanged up to
  rounding), ``equalize`` is the two together;
- ``channel_ranges(folded, x_nchw) -> {name: per-channel max}``.

Range setting and bias correction live in ``spnas.quantize`` (the int8 plan), which records the
activation equalization's factors (``QuantPlan.equalization``) so every format lowers the same
rescaled net.  Weight CLE did not help on top of MSE ranges and bias correction
(``benchmarks/results/tflite_int8.json``); activation range equalization with its defaults gained
0.5-2.0 dB at the pooled features of the simulation on four models
(``benchmarks/results/ptq_noise.json``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from spnas.arch import decode_arch

ACTIVATION_ALPHA = 0.5  # activation equalization: the exponent of each channel's scale
ACTIVATION_CAP = 4.0  # and its largest scale, so a near-dead channel is not blown up


@dataclass(frozen=True)
class FoldedConv:
    """One convolution (or the classifier) with BatchNorm folded in."""

    name: str  # timm module name, e.g. "blocks.3.1.conv_dw"
    weight: np.ndarray  # float32, (out, in/groups, kh, kw); classifier (out, in)
    bias: np.ndarray  # float32, (out,)
    stride: int = 1
    padding: int = 0
    groups: int = 1
    relu: bool = False

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.weight.shape[0]

    @property
    def is_linear(self) -> bool:
        return self.weight.ndim == 2


@dataclass(frozen=True)
class FoldedBlock:
    name: str  # "blocks.S.B"
    convs: tuple[FoldedConv, ...]
    residual: bool


@dataclass(frozen=True)
class FoldedNet:
    """SPNasNet as folded convolutions: stem, blocks, head, then global average pool and classifier."""

    stem: FoldedConv
    blocks: tuple[FoldedBlock, ...]
    head: FoldedConv
    classifier: FoldedConv
    notes: tuple[str, ...] = field(default=())  # transforms applied, for reports

    def layers(self) -> Iterator[FoldedConv]:
        yield self.stem
        for block in self.blocks:
            yield from block.convs
        yield self.head
        yield self.classifier

    def replace_layers(self, new: dict[str, FoldedConv], note: str) -> FoldedNet:
        pick = lambda conv: new.get(conv.name, conv)  # noqa: E731
        return FoldedNet(stem=pick(self.stem),
                         blocks=tuple(replace(b, convs=tuple(pick(c) for c in b.convs)) for b in self.blocks),
                         head=pick(self.head), classifier=pick(self.classifier), notes=(*self.notes, note))

    def to_state_dict(self) -> dict[str, np.ndarray]:
        state = {}
        for conv in self.layers():
            state[f"{conv.name}.weight"] = conv.weight
            state[f"{conv.name}.bias"] = conv.bias
        return state

    def walk(self, x, ops: NetOps):
        """Run ``x`` through the net with ``ops``; every quantized tensor passes ``ops.tensor``."""
        t = ops.tensor("input", x)
        t = ops.tensor(self.stem.name, ops.conv(self.stem, t))
        for block in self.blocks:
            out = t
            for conv in block.convs:
                out = ops.tensor(conv.name, ops.conv(conv, out))
            if block.residual:
                out = ops.tensor(f"{block.name}.add", ops.add(block.name, out, t))
            t = out
        t = ops.tensor(self.head.name, ops.conv(self.head, t))
        t = ops.tensor("global_pool", ops.pool(t))
        return ops.tensor(self.classifier.name, ops.conv(self.classifier, t))

    def tensor_names(self) -> list[str]:
        """Every tensor the walk passes through ``NetOps.tensor``, in execution order."""
        recorder = _Recorder()
        self.walk(None, recorder)
        return list(recorder.seen)

    def activations(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor of ``tensor_names`` (conv outputs after ReLU) for an NCHW float batch, float32."""
        import torch

        recorder = _Recorder(TorchOps())
        with torch.inference_mode():
            self.walk(torch_batch(x), recorder)
        return {name: value.numpy() for name, value in recorder.seen.items()}

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.activations(x)[self.classifier.name]


class NetOps:
    """What ``FoldedNet.walk`` does at each step; subclasses override what differs."""

    def conv(self, conv: FoldedConv, x):
        raise NotImplementedError

    def add(self, name: str, out, skip):
        return out + skip

    def pool(self, x):
        return x.mean(dim=(2, 3))

    def tensor(self, name: str, x):
        return x


class TorchOps(NetOps):
    """The float32 reference in torch, NCHW."""

    def conv(self, conv: FoldedConv, x):
        return _apply(conv, x)


class _Recorder(NetOps):
    """Wraps other ops and keeps every tensor by name (with no inner ops: only the names)."""

    def __init__(self, inner: NetOps | None = None):
        self.inner, self.seen = inner, {}

    def conv(self, conv, x):
        return self.inner.conv(conv, x) if self.inner else None

    def add(self, name, out, skip):
        return self.inner.add(name, out, skip) if self.inner else None

    def pool(self, x):
        return self.inner.pool(x) if self.inner else None

    def tensor(self, name, x):
        self.seen[name] = self.inner.tensor(name, x) if self.inner else None
        return self.seen[name]


def torch_batch(x):
    """A float32 NCHW batch as the torch walks take it: NCHW in shape, channels-last in memory, where CPU
    convolutions (oneDNN) run faster (a float walk of 64 images: 3.6 s on NCHW memory, 1.9 s here, on 2 cores)."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))
    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t


def _apply(conv: FoldedConv, t):
    import torch
    import torch.nn.functional as F

    weight = torch.from_numpy(conv.weight.astype(np.float32))
    bias = torch.from_numpy(conv.bias.astype(np.float32))
    if conv.is_linear:
        out = F.linear(t, weight, bias)
    else:
        out = F.conv2d(t, weight, bias, conv.stride, conv.padding, groups=conv.groups)
    return out.relu_() if conv.relu else out  # in place: ``out`` is the conv's own new tensor


def _fold(conv, bn, name: str, relu: bool) -> FoldedConv:
    weight = conv.weight.detach().double().numpy()
    scale = (bn.weight.detach().double() / (bn.running_var.detach().double() + bn.eps).sqrt()).numpy()
    bias = bn.bias.detach().double().numpy() - bn.running_mean.detach().double().numpy() * scale
    return FoldedConv(name=name, weight=(weight * scale[:, None, None, None]).astype(np.float32),
                      bias=bias.astype(np.float32), stride=conv.stride[0], padding=conv.padding[0],
                      groups=conv.groups, relu=relu)


def fold_batchnorm(model) -> FoldedNet:
    """Fold every BatchNorm of an eval ``SPNasNet`` into the conv before it (float64 math)."""
    specs = decode_arch()
    if [s.name for s in specs] != [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks)
                                   for j in range(len(stage))]:
        raise ValueError("model structure does not match spnas.arch.decode_arch()")
    blocks = []
    for spec in specs:
        module = model.blocks[spec.stage][spec.index]
        if spec.block_type == "ds":
            convs = (_fold(module.conv_dw, module.bn1, f"{spec.name}.conv_dw", relu=True),
                     _fold(module.conv_pw, module.bn2, f"{spec.name}.conv_pw", relu=False))
        else:
            convs = (_fold(module.conv_pw, module.bn1, f"{spec.name}.conv_pw", relu=True),
                     _fold(module.conv_dw, module.bn2, f"{spec.name}.conv_dw", relu=True),
                     _fold(module.conv_pwl, module.bn3, f"{spec.name}.conv_pwl", relu=False))
        blocks.append(FoldedBlock(spec.name, convs, spec.has_residual))
    classifier = FoldedConv("classifier", model.classifier.weight.detach().numpy().astype(np.float32),
                            model.classifier.bias.detach().numpy().astype(np.float32))
    return FoldedNet(stem=_fold(model.conv_stem, model.bn1, "conv_stem", relu=True), blocks=tuple(blocks),
                     head=_fold(model.conv_head, model.bn2, "conv_head", relu=True), classifier=classifier,
                     notes=("batchnorm folded",))


def _relu_pairs(folded: FoldedNet) -> Iterator[tuple[str, str]]:
    """(producer, consumer) names where a ReLU output feeds exactly one conv: scaling is exact."""
    first = folded.blocks[0].convs[0]
    yield folded.stem.name, first.name
    for block in folded.blocks:
        for producer, consumer in zip(block.convs, block.convs[1:], strict=False):
            if producer.relu:
                yield producer.name, consumer.name


def _input_axis_ranges(conv: FoldedConv) -> np.ndarray:
    """Max |w| per input channel of ``conv`` (per channel for depthwise)."""
    w = np.abs(conv.weight)
    return w.reshape(w.shape[0], -1).max(axis=1) if conv.is_depthwise else w.max(axis=(0, 2, 3))


def _output_ranges(conv: FoldedConv) -> np.ndarray:
    return np.abs(conv.weight).reshape(conv.weight.shape[0], -1).max(axis=1)


def _rescale(producer: FoldedConv, consumer: FoldedConv, scale: np.ndarray) -> tuple[FoldedConv, FoldedConv]:
    """Multiply producer output channel i by scale[i] and divide the consumer's input channel i by it."""
    scale = scale.astype(np.float64)
    p_weight = producer.weight * scale[:, None, None, None]
    p_bias = producer.bias * scale
    axis = (slice(None), None, None, None) if consumer.is_depthwise else (None, slice(None), None, None)
    c_weight = consumer.weight / scale[axis]
    return (replace(producer, weight=p_weight.astype(np.float32), bias=p_bias.astype(np.float32)),
            replace(consumer, weight=c_weight.astype(np.float32)))


def equalization_scales(folded: FoldedNet, activation_ranges: dict[str, np.ndarray] | None = None,
                        iterations: int = 8, alpha: float = ACTIVATION_ALPHA,
                        cap: float = ACTIVATION_CAP) -> dict[str, np.ndarray]:
    """``{producer: per-channel factor}`` of cross-layer equalization over ReLU-separated conv pairs (``rescale``).

    Without ``activation_ranges``: Nagel et al.'s weight-range balancing, s = sqrt(r1 r2) / r2, iterated.
    With them: every ReLU output channel is scaled by ``(max range / its range) ** alpha``, at most ``cap``, so
    its weak channels use more of the per-tensor int8 grid.  A depthwise consumer's per-channel weight grid takes
    any scale; a pointwise one pays in weight rounding what the activation gains, hence the square root.  An
    uncapped ``alpha = 1`` on depthwise consumers alone scaled near-dead channels 1000x and took a 4-class
    fine-tune's pooled features from 34.2 to 16.2 dB (``benchmarks/ptq_noise.py``).
    """
    pairs = list(_relu_pairs(folded))
    if activation_ranges is not None:
        factors = {}
        for producer, _ in pairs:
            ranges = activation_ranges[producer].astype(np.float64)
            factors[producer] = np.clip((ranges.max() / np.maximum(ranges, 1e-30)) ** alpha, 1.0, cap)
        return factors
    layers = {conv.name: conv for conv in folded.layers()}
    total = {producer: np.ones(layers[producer].weight.shape[0]) for producer, _ in pairs}
    for _ in range(iterations):
        for producer, consumer in pairs:
            r1, r2 = _output_ranges(layers[producer]), _input_axis_ranges(layers[consumer])
            scale = np.where((r1 > 0) & (r2 > 0), r2 / np.sqrt(np.maximum(r1 * r2, 1e-60)), 1.0)
            layers[producer], layers[consumer] = _rescale(layers[producer], layers[consumer], scale)
            total[producer] *= scale
    return total


def rescale(folded: FoldedNet, scales: dict[str, np.ndarray], note: str = "cross-layer equalization") -> FoldedNet:
    """``folded`` with each producer's output channel i multiplied by ``scales[producer][i]`` and its consumer's
    input channel i divided by it: the same float function (ReLU commutes with a positive scale)."""
    consumers = dict(_relu_pairs(folded))
    unknown = sorted(set(scales) - set(consumers))
    if unknown:
        raise ValueError(f"not a ReLU-separated producer: {', '.join(unknown)}")
    layers = {conv.name: conv for conv in folded.layers()}
    for producer, scale in scales.items():
        consumer = consumers[producer]
        layers[producer], layers[consumer] = _rescale(layers[producer], layers[consumer], np.asarray(scale))
    return folded.replace_layers(layers, note)


def equalize(folded: FoldedNet, activation_ranges: dict[str, np.ndarray] | None = None, **options) -> FoldedNet:
    """``folded`` rescaled by ``equalization_scales(folded, activation_ranges, **options)``."""
    kind = "weights" if activation_ranges is None else "activation ranges"
    return rescale(folded, equalization_scales(folded, activation_ranges, **options),
                   f"cross-layer equalization ({kind})")


def relu_producers(folded: FoldedNet) -> dict[str, int]:
    """``{producer: channels}`` of the ReLU-separated pairs that equalization may rescale."""
    layers = {conv.name: conv for conv in folded.layers()}
    return {producer: layers[producer].weight.shape[0] for producer, _ in _relu_pairs(folded)}


def channel_ranges(folded: FoldedNet, x_nchw: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """Per-output-channel maximum of every conv output (after ReLU) over a calibration batch."""
    ranges: dict[str, np.ndarray] = {}
    for start in range(0, len(x_nchw), batch):
        for name, value in folded.activations(x_nchw[start:start + batch]).items():
            axes = (0, 2, 3) if value.ndim == 4 else (0,)
            high = np.abs(value).max(axis=axes)
            ranges[name] = high if name not in ranges else np.maximum(ranges[name], high)
    return ranges
