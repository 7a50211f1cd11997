"""SPNasNet as a MIL program, built from ``FoldedNet.walk`` with coremltools' public MIL Builder.

One builder writes every CoreML package (``spnas.export.coreml`` turns the program into a
classifier ``.mlpackage``), as ``spnas.export.tflite.build_graph`` does the TF graph:

- float (``program(folded, spec)``): ``conv`` with BatchNorm folded and PyTorch's symmetric
  padding (``pad_type`` custom) + ``relu``, residual ``add``, ``reduce_mean`` over H and W,
  ``linear``;
- W8A8 (``plan=``): the lowering of a ``spnas.quantize.QuantPlan``, op for op what
  ``spnas.quantize.simulate`` computes.  Every conv and the classifier take
  ``constexpr_affine_dequantize`` weights (int8 ``round(w / s)`` clipped to +-127 on the plan's
  per-output-channel scales ``s``, zero point 0, axis 0) and the plan's corrected bias, rounded
  to the int32 grid ``input scale x weight scale`` as TFLite and ONNX Runtime store it and the
  simulation rounds it (``lowered_biases``), kept in float.  A layer of ``plan.float_layers``
  keeps float weights and the unrounded bias.  Every tensor of ``FoldedNet.tensor_names()``
  (the input, each conv output after its ReLU, each residual add, the pool, the logits) passes
  ``quantize`` (int8, the plan's scale and zero point) then ``dequantize``: the activation
  quantization of coremltools' own W8A8 programs;
- W8 (``weights_only=True``): int8 weights as above on ``max|w| / 127`` scales of the folded
  weights, float biases, float activations.

With ``image_input`` the function's input is ``image`` (0..255 scaled by Core ML's ImageType
``scale``, a ``mul`` coremltools inserts at conversion) and ``(x - mean) / std`` per channel
comes before the walk; otherwise ``input`` is the normalised NCHW tensor.  The function returns
``logits`` ``(1, K)`` and their softmax ``probabilities``, which ``ct.ClassifierConfig`` turns
into ``classLabel`` and ``classLabel_probs``.
"""

from __future__ import annotations

import numpy as np

from spnas.folding import FoldedConv, FoldedNet, NetOps
from spnas.preprocess import PreprocessSpec
from spnas.quantize.simulate import int8_weight, lowered_biases, weight_scales

INPUT_NAME, IMAGE_INPUT_NAME, OUTPUT_NAME = "input", "image", "logits"
PROBABILITIES_NAME = "probabilities"  # the softmax that ct.ClassifierConfig turns into classLabel + classLabel_probs


class _MilOps(NetOps):
    """``FoldedNet.walk`` as MIL Builder ops (NCHW); op names follow the timm modules."""

    def __init__(self, folded: FoldedNet, plan=None, weights_only: bool = False):
        from coremltools.converters.mil import Builder as mb

        self.mb, self.plan, self.last = mb, plan, folded.classifier.name
        self.biases = {conv.name: conv.bias for conv in folded.layers()}
        self.scales: dict[str, list] = {}  # layers with int8 weights: their per-channel scales
        if plan is not None:
            self.biases = lowered_biases(folded, plan)
            self.scales = {name: layer.weight_scales for name, layer in plan.layers.items()
                           if name not in plan.float_layers}
        elif weights_only:
            self.scales = {conv.name: weight_scales(conv.weight).tolist() for conv in folded.layers()}

    def _weight(self, conv: FoldedConv):
        if conv.name not in self.scales:
            return conv.weight.astype(np.float32)
        scales = self.scales[conv.name]
        return self.mb.constexpr_affine_dequantize(
            quantized_data=int8_weight(conv.weight, scales), zero_point=np.int8(0),
            scale=np.asarray(scales, np.float32), axis=0, name=f"{conv.name}.weight")

    def conv(self, conv, x):
        mb = self.mb
        weight, bias = self._weight(conv), np.asarray(self.biases[conv.name], np.float32)
        if conv.is_linear:
            final = self.plan is None and conv.name == self.last  # float logits are the function's output
            return mb.linear(x=x, weight=weight, bias=bias, name=OUTPUT_NAME if final else conv.name)
        pad = int(conv.padding)
        x = mb.conv(x=x, weight=weight, bias=bias, strides=[conv.stride] * 2, pad_type="custom", pad=[pad] * 4,
                    groups=conv.groups, name=f"{conv.name}.conv" if conv.relu else conv.name)
        return mb.relu(x=x, name=conv.name) if conv.relu else x

    def add(self, name, out, skip):
        return self.mb.add(x=out, y=skip, name=f"{name}.add")

    def pool(self, x):
        return self.mb.reduce_mean(x=x, axes=[2, 3], keep_dims=False, name="global_pool")

    def tensor(self, name, x):
        if self.plan is None:
            return x
        grid = self.plan.tensors[name]
        scale, zero_point = np.float32(grid.scale), np.int8(grid.zero_point)
        q = self.mb.quantize(input=x, scale=scale, zero_point=zero_point, output_dtype="int8", name=f"{name}.q")
        return self.mb.dequantize(input=q, scale=scale, zero_point=zero_point,
                                  name=OUTPUT_NAME if name == self.last else f"{name}.dq")


def program(folded: FoldedNet, spec: PreprocessSpec, *, plan=None, weights_only: bool = False,
            image_input: bool = False):
    """The ``main`` MIL program (iOS 17 opset) of ``folded``: float, the W8A8 lowering of ``plan``, or W8."""
    from spnas.mil_eval import import_coremltools

    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    if plan is not None:
        folded = plan.equalized(folded)  # the net the plan's weight scales and grids are of
    ops = _MilOps(folded, plan, weights_only)
    size = spec.input_size
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
    inv_std = (1.0 / np.asarray(spec.std, np.float64)).astype(np.float32).reshape(1, 3, 1, 1)

    def body(x):
        logits = folded.walk(x, ops)
        return logits, mb.softmax(x=logits, axis=-1, name=PROBABILITIES_NAME)

    # The Builder names a function's inputs after its Python parameters: one function per input name.
    def tensor_main(input):  # noqa: A002 - the package's input is called "input"
        return body(input)

    def image_main(image):
        return body(mb.mul(x=mb.sub(x=image, y=mean, name="normalize.sub"), y=inv_std, name="normalize"))

    return mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, size, size))],
                      opset_version=ct.target.iOS17)(image_main if image_input else tensor_main)
