package org.spnas.demo.core

/**
 * The contents of `preprocessing.json`, written by `spnas.android.sync_assets` on the host.
 *
 * The app takes every preprocessing constant and every quantization parameter from here, never
 * from code, so a re-exported model cannot silently disagree with the app.
 */
class ModelSpec(
    val preprocessing: PreprocessingSpec,
    val input: TensorSpec,
    val inputMode: InputMode,
    val output: TensorSpec,
    val modelFile: String,
    val sourceFile: String,
    val precision: String,
    val modelSizeBytes: Long,
    val labelsFile: String,
    val labelCount: Int,
) {
    companion object {
        const val SCHEMA_VERSION = 1

        fun parse(text: String): ModelSpec {
            val root = JsonObject.parse(text)
            val version = root.int("schema_version")
            require(version == SCHEMA_VERSION) {
                "preprocessing.json schema_version $version; this app reads version $SCHEMA_VERSION (re-sync the assets)"
            }
            val model = root.obj("model")
            val input = root.obj("input")
            val labels = root.obj("labels")
            val spec = ModelSpec(
                preprocessing = PreprocessingSpec.from(root.obj("preprocessing")),
                input = TensorSpec.from(input),
                inputMode = InputMode.of(input.string("mode")),
                output = TensorSpec.from(root.obj("output")),
                modelFile = model.string("file"),
                sourceFile = model.string("source_file"),
                precision = model.string("precision"),
                modelSizeBytes = model.double("size_bytes").toLong(),
                labelsFile = labels.string("file"),
                labelCount = labels.int("count"),
            )
            val size = spec.preprocessing.inputSize
            require(spec.input.shape.contentEquals(intArrayOf(1, size, size, 3))) {
                "model input shape ${spec.input.shape.contentToString()} is not [1, $size, $size, 3] (NHWC)"
            }
            require(spec.output.elementCount == spec.labelCount) {
                "model output has ${spec.output.elementCount} values but there are ${spec.labelCount} labels"
            }
            return spec
        }
    }
}

/** timm's eval transform: resize the short side (antialiased bilinear or bicubic), center crop, mean/std. */
class PreprocessingSpec(
    val inputSize: Int,
    val resizeSize: Int,
    val mean: FloatArray,
    val std: FloatArray,
    val pixelDivisor: Float,
    val filter: ResampleFilter = ResampleFilter.BILINEAR,
) {
    companion object {
        fun from(json: JsonObject): PreprocessingSpec {
            require(json.string("channel_order") == "RGB") { "channel_order ${json.string("channel_order")} is not RGB" }
            val interpolation = json.string("interpolation")
            val filter = ResampleFilter.of(interpolation)
            require(json.string("resize_algorithm") == "pillow-$interpolation-antialias") {
                "resize_algorithm ${json.string("resize_algorithm")} is not implemented"
            }
            require(json.string("crop_offset_rounding") == "half-even") { "crop_offset_rounding must be half-even" }
            val spec = PreprocessingSpec(
                inputSize = json.int("input_size"),
                resizeSize = json.int("resize_size"),
                // Rounded to float32 exactly as numpy's float32 arrays are on the host.
                mean = json.doubles("mean").map { it.toFloat() }.toFloatArray(),
                std = json.doubles("std").map { it.toFloat() }.toFloatArray(),
                pixelDivisor = json.double("pixel_divisor").toFloat(),
                filter = filter,
            )
            require(spec.mean.size == 3 && spec.std.size == 3) { "mean and std need 3 values" }
            require(spec.resizeSize >= spec.inputSize) { "resize_size ${spec.resizeSize} < input_size ${spec.inputSize}" }
            return spec
        }
    }
}

enum class DType(val bytes: Int) {
    FLOAT32(4), INT8(1), UINT8(1);

    companion object {
        fun of(name: String): DType = when (name) {
            "float32" -> FLOAT32
            "int8" -> INT8
            "uint8" -> UINT8
            else -> throw IllegalArgumentException("tensor dtype $name is not supported (float32, int8, uint8)")
        }
    }
}

/** What the input tensor holds before quantization: normalised values, or raw 0..255 pixels. */
enum class InputMode {
    NORMALIZED, PIXELS;

    companion object {
        fun of(name: String): InputMode = when (name) {
            "normalized" -> NORMALIZED
            "pixels" -> PIXELS
            else -> throw IllegalArgumentException("input mode $name is not supported (normalized, pixels)")
        }
    }
}

/** A tensor's shape, element type and affine quantization (real = scale * (q - zeroPoint)). */
class TensorSpec(val name: String, val shape: IntArray, val dtype: DType, val scale: Float, val zeroPoint: Int) {
    val elementCount: Int get() = shape.fold(1) { product, dim -> product * dim }

    companion object {
        fun from(json: JsonObject): TensorSpec {
            val spec = TensorSpec(
                name = json.string("name"),
                shape = json.ints("shape"),
                dtype = DType.of(json.string("dtype")),
                scale = json.double("scale").toFloat(),
                zeroPoint = json.int("zero_point"),
            )
            require(spec.dtype == DType.FLOAT32 || spec.scale > 0f) {
                "quantized tensor ${spec.name} has scale ${spec.scale}"
            }
            return spec
        }
    }
}
