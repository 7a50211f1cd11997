"""The MediaPipe app variant of a TFLite classifier, and whether MediaPipe Tasks' ImageClassifier takes a model.

MediaPipe's ImageClassifier (``mediapipe/tasks/cc/vision/utils/image_tensor_specs.cc`` and
``components/processors/classification_postprocessing_graph.cc``) wants a uint8 or float32
image input (float32 only with NormalizationOptions, and its CPU converter refuses per-channel
mean/std, which ImageNet's are), and float32 or uint8 scores.  So the app variant takes raw
uint8 RGB with the normalisation inside the graph (as ``--uint8-input``), and gets a float32
SOFTMAX appended here, after a DEQUANTIZE when the logits are int8: the probabilities are the
softmax of exactly the logits the plain graph computes, not a requantized int8 softmax.

Runners gate an artifact on its logits, so ``logits_view`` gives a copy of such a model whose
output is the SOFTMAX's input; the ops and weights are the artifact's own.

``verdict`` asks the real ImageClassifier (the ``mediapipe`` wheel) to load a model and classify
one crop, so the report's ``"mediapipe"`` field is MediaPipe's answer, with its error message.
"""

from __future__ import annotations

import numpy as np

PROBABILITIES, LOGITS = "probabilities", "logits"


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _model(content: bytes):
    schema = _schema()
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model, builtin: int) -> int:
    """Index of ``builtin`` in the model's operator codes, added if missing."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = _schema().OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _append_op(model, builtin: int, source: int, name: str, options_type: int = 0, options=None) -> int:
    """Append a one-input op producing a new float32 tensor shaped like ``source``; returns that tensor."""
    schema = _schema()
    graph = model.subgraphs[0]
    buffer = schema.BufferT()
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = np.array(graph.tensors[source].shape, np.int32)
    tensor.type, tensor.name, tensor.buffer = schema.TensorType.FLOAT32, name.encode(), len(model.buffers) - 1
    graph.tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(model, builtin)
    op.inputs, op.outputs = np.array([source], np.int32), np.array([len(graph.tensors) - 1], np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    graph.operators.append(op)
    return len(graph.tensors) - 1


def with_softmax(content: bytes) -> bytes:
    """The model with float32 softmax probabilities as its output (DEQUANTIZE first for int8 logits)."""
    schema = _schema()
    model = _model(content)
    graph = model.subgraphs[0]
    (logits,) = graph.outputs
    if graph.tensors[logits].type != schema.TensorType.FLOAT32:
        logits = _append_op(model, schema.BuiltinOperator.DEQUANTIZE, logits, LOGITS)
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    probabilities = _append_op(model, schema.BuiltinOperator.SOFTMAX, logits, PROBABILITIES,
                               schema.BuiltinOptions.SoftmaxOptions, options)
    graph.outputs = np.array([probabilities], np.int32)
    for signature in model.signatureDefs or []:  # LiteRT's signature runner sees the same output
        (output,) = signature.outputs
        output.name, output.tensorIndex = PROBABILITIES.encode(), probabilities
    return _pack(model)


def softmax_input(content: bytes) -> int | None:
    """The tensor a final SOFTMAX turns into the model's output, or None when the output is not a softmax."""
    schema = _schema()
    model = schema.Model.GetRootAs(content, 0)
    graph = model.Subgraphs(0)
    output = graph.Outputs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if op.Outputs(0) == output and max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == \
                schema.BuiltinOperator.SOFTMAX:
            return int(op.Inputs(0))
    return None


def logits_view(content: bytes) -> bytes:
    """A copy of a softmax-output model whose output is the softmax's input (the logits); else the model."""
    source = softmax_input(content)
    if source is None:
        return content
    model = _model(content)
    model.subgraphs[0].outputs = np.array([source], np.int32)
    model.signatureDefs = None
    return _pack(model)


def verdict(content: bytes, crop: np.ndarray) -> tuple[bool | None, str]:
    """Does MediaPipe Tasks' ImageClassifier load ``content`` and classify ``crop`` (uint8 HxWx3)?

    (True, what ran), (False, MediaPipe's error), or (None, why it was not asked).
    """
    try:
        import mediapipe
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision import image_classifier
    except (ImportError, OSError) as exc:  # not installed, or its native library does not load here
        return None, f"not checked: MediaPipe Tasks does not import ({exc}); pip install 'spnas[mediapipe]'"
    from spnas.console import quiet_stderr

    version = getattr(mediapipe, "__version__", "?")
    options = image_classifier.ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=content),
                                                      max_results=1)
    try:
        with quiet_stderr(), image_classifier.ImageClassifier.create_from_options(options) as classifier:
            classifier.classify(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB,
                                                data=np.ascontiguousarray(crop, np.uint8)))
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        return False, f"MediaPipe {version} ImageClassifier refuses it: {str(exc).splitlines()[0]}"
    return True, f"MediaPipe {version} ImageClassifier loads it and classifies with its labels"
