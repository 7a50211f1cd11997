"""Standard TFLite Metadata: what MediaPipe Tasks and LiteRT's metadata library read from a ``.tflite``.

Every TFLite artifact carries, besides our own ``spnas.*`` buffers (which the runners read), the
``TFLITE_METADATA`` buffer of the TFLite Metadata schema: model name, version and description;
the input as an RGB image of the model's size, with NormalizationOptions when the input holds
normalised values (in 0..255 pixel units, MediaPipe's convention); the output as probabilities
or logits, whichever it is; and the class names as a ``TENSOR_AXIS_LABELS`` associated file.

It is written with the flatbuffer schema MediaPipe ships
(``mediapipe.tasks.metadata.metadata_schema_py_generated``, the generated code its own metadata
writers use), because those writers fail to import in mediapipe 1.2.2 (a missing
``_pywrap_metadata_version`` extension) and tflite-support pins ``protobuf<4``.  What the
writers' populator adds by hand is done here the same way: the metadata flatbuffer gets the
``M001`` identifier and ``min_parser_version``, and associated files are zipped (stored, not
deflated) onto the end of the model flatbuffer, where MediaPipe's ``ModelMetadataExtractor``
looks for them.
"""

from __future__ import annotations

import io
import zipfile

BUFFER_NAME = "TFLITE_METADATA"  # the metadata entry MediaPipe and LiteRT's metadata library look up
FILE_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the zip epoch: associated files carry no build time
# The lowest metadata parser that reads every field written here.  MediaPipe's
# metadata_version.cc raises it above 1.0.0 only for subgraph-level process units, tensor
# groups, VOCABULARY / SCaNN files, versioned associated files and custom metadata: none is used.
MIN_PARSER_VERSION = "1.0.0"


def _schema():
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    return schema


def build(*, name: str, version: str, description: str, input_name: str, input_description: str,
          input_size: int, normalization: tuple[list[float], list[float]] | None,
          input_range: tuple[float, float] | None, output_name: str, output_description: str,
          probabilities: bool) -> bytes:
    """The ``TFLITE_METADATA`` flatbuffer of a one-input image classifier.

    ``normalization``: (mean, std) in 0..255 pixel units, for an input that holds
    ``(pixel - mean) / std``; None for an input that takes the raw pixels.  ``input_range``:
    the (min, max) the input tensor can hold.  ``probabilities``: the output is a softmax
    (stats 0..1), else logits (no range).  Labels are referenced as ``LABELS_FILE``.
    """
    schema = _schema()
    image = schema.ImagePropertiesT()
    image.colorSpace = schema.ColorSpaceType.RGB
    image.defaultSize = schema.ImageSizeT()
    image.defaultSize.width = image.defaultSize.height = int(input_size)
    model_input = _tensor(schema, input_name, input_description, schema.ContentProperties.ImageProperties, image,
                          input_range)
    if normalization is not None:
        unit = schema.ProcessUnitT()
        unit.optionsType = schema.ProcessUnitOptions.NormalizationOptions
        unit.options = schema.NormalizationOptionsT()
        unit.options.mean, unit.options.std = [float(v) for v in normalization[0]], [float(v) for v in normalization[1]]
        model_input.processUnits = [unit]
    model_output = _tensor(schema, output_name, output_description, schema.ContentProperties.FeatureProperties,
                           schema.FeaturePropertiesT(), (0.0, 1.0) if probabilities else None)
    labels = schema.AssociatedFileT()
    labels.name, labels.type = LABELS_FILE, schema.AssociatedFileType.TENSOR_AXIS_LABELS
    labels.description = "Class names, one per line, in the order of the output's scores."
    model_output.associatedFiles = [labels]
    subgraph = schema.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [model_input], [model_output]
    metadata = schema.ModelMetadataT()
    metadata.name, metadata.version, metadata.description = name, version, description
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = MIN_PARSER_VERSION
    return _pack(metadata)


def _tensor(schema, name, description, content_type, properties, value_range):
    tensor = schema.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = schema.ContentT()
    tensor.content.contentPropertiesType, tensor.content.contentProperties = content_type, properties
    tensor.stats = schema.StatsT()
    if value_range is not None:
        tensor.stats.min, tensor.stats.max = [float(value_range[0])], [float(value_range[1])]
    return tensor


def _pack(metadata) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), FILE_IDENTIFIER)
    return bytes(builder.Output())


def with_associated_files(content: bytes, files: dict[str, bytes]) -> bytes:
    """The model flatbuffer with ``files`` zipped onto its end (what MetadataPopulator does).

    The flatbuffer must be final: repacking it afterwards drops the zip.  Entries carry a fixed
    date, not the clock's, so one model and plan give the same bytes (``spnas-export --plan``).
    """
    out = io.BytesIO(content)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for file_name, data in files.items():
            archive.writestr(zipfile.ZipInfo(file_name, date_time=ZIP_DATE), data)
    return out.getvalue()


def associated_files(content: bytes) -> dict[str, bytes]:
    """The files zipped onto a model (empty when there are none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def read(content: bytes):
    """The model's ``TFLITE_METADATA`` as a schema object (``ModelMetadataT``), or None."""
    from ai_edge_litert import schema_py_generated as tflite_schema

    model = tflite_schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode() == BUFFER_NAME:
            buffer = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            schema = _schema()
            return schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(buffer, 0))
    return None


def describe(ctx, precision: str, content: bytes, *, probabilities: bool = False) -> bytes:
    """The standard metadata of one of our classifiers, from its converted flatbuffer and ``ctx``.

    What the input holds follows from its type: uint8 takes raw RGB pixels (normalisation in the
    graph, so no NormalizationOptions); float32 and int8 hold ``(pixel - mean) / std`` in pixel
    units (int8 then quantized with the tensor's scale and zero point).
    """
    from ai_edge_litert import schema_py_generated as tflite_schema

    from spnas.version import __version__

    spec = ctx.preprocessing
    graph = tflite_schema.Model.GetRootAs(content, 0).Subgraphs(0)
    input_type = graph.Tensors(graph.Inputs(0)).Type()
    types = tflite_schema.TensorType
    steps = (f"RGB, resize the short side to {spec.resize_size} ({spec.interpolation}), center crop "
             f"{spec.input_size}x{spec.input_size}")
    if input_type == types.UINT8:
        normalization, value_range = None, (0.0, 255.0)
        input_description = f"{steps}; raw uint8 pixels (normalisation is inside the model)."
    else:
        mean = [m * spec.pixel_divisor for m in spec.mean]
        std = [s * spec.pixel_divisor for s in spec.std]
        normalization = (mean, std)
        value_range = ((-128.0, 127.0) if input_type == types.INT8
                       else (min((0 - m) / s for m, s in zip(mean, std, strict=True)),
                             max((spec.pixel_divisor - m) / s for m, s in zip(mean, std, strict=True))))
        input_description = f"{steps}; (pixel - mean) / std per channel" + (
            ", then quantized with the tensor's scale and zero point." if input_type == types.INT8 else ".")
    kind = "probabilities" if probabilities else "logits"
    classes = len(ctx.class_names)
    return build(name="SPNasNet-100 (timm spnasnet_100)", version=__version__,
                 description=f"Image classifier over {classes} classes ({precision}), exported by spnas.",
                 input_name="image", input_description=input_description, input_size=spec.input_size,
                 normalization=normalization, input_range=value_range, output_name=kind,
                 output_description=f"{classes} class {'probabilities (softmax)' if probabilities else 'logits'}; "
                                    f"names in {LABELS_FILE}.",
                 probabilities=probabilities)


def with_labels(content: bytes, class_names: list[str]) -> bytes:
    """Zip the class names onto the model as the ``LABELS_FILE`` its metadata names."""
    return with_associated_files(content, {LABELS_FILE: ("\n".join(class_names) + "\n").encode()})
