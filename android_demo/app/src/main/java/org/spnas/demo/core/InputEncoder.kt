package org.spnas.demo.core

/** The model input in the form LiteRT's `TensorBuffer` takes: `writeFloat` or `writeInt8`. */
sealed class ModelInput {
    class Floats(val values: FloatArray) : ModelInput()

    /** int8 or uint8 elements; uint8 values 128..255 are stored in the same byte patterns. */
    class Bytes(val values: ByteArray) : ModelInput()

    /** The tensor's bytes in little-endian order, as `golden/input.bin` stores them. */
    fun toLittleEndianBytes(): ByteArray = when (this) {
        is Bytes -> values.copyOf()
        is Floats -> {
            val out = ByteArray(values.size * 4)
            for (i in values.indices) {
                val bits = java.lang.Float.floatToRawIntBits(values[i])
                for (b in 0 until 4) out[i * 4 + b] = (bits shr (8 * b)).toByte()
            }
            out
        }
    }
}

/**
 * uint8 RGB crop -> model input, with the host's arithmetic (`spnas.android.app_input`).
 *
 * [InputMode.NORMALIZED]: `(pixel / divisor - mean[c]) / std[c]` in float32, the same operations in
 * the same order as numpy's float32 arrays on the host; integer inputs are then quantized as
 * `clip(rint(value / scale) + zeroPoint)`, ties to even like `np.rint`. A pixel has 256 values per
 * channel, so the whole transform is a 3 x 256 lookup table built once per model.
 * [InputMode.PIXELS]: a uint8 input whose graph normalises by itself takes the crop's bytes as they are.
 */
class InputEncoder(preprocessing: PreprocessingSpec, private val tensor: TensorSpec, private val mode: InputMode) {
    init {
        require(mode == InputMode.NORMALIZED || tensor.dtype == DType.UINT8) {
            "input mode pixels needs a uint8 input tensor, not ${tensor.dtype}"
        }
    }

    private val floatTable: Array<FloatArray> = Array(3) { c ->
        FloatArray(256) { pixel -> (pixel.toFloat() / preprocessing.pixelDivisor - preprocessing.mean[c]) / preprocessing.std[c] }
    }

    private val byteTable: Array<ByteArray> = Array(3) { c ->
        ByteArray(256) { pixel -> quantize(floatTable[c][pixel]) }
    }

    private fun quantize(value: Float): Byte {
        if (tensor.dtype == DType.FLOAT32) return 0 // float inputs use floatTable only
        val (low, high) = if (tensor.dtype == DType.INT8) Pair(-128, 127) else Pair(0, 255)
        val q = Math.rint((value / tensor.scale).toDouble()).toInt() + tensor.zeroPoint
        return q.coerceIn(low, high).toByte()
    }

    fun encode(crop: RgbImage): ModelInput {
        val pixels = crop.pixels
        return when {
            mode == InputMode.PIXELS -> ModelInput.Bytes(pixels.copyOf())
            tensor.dtype == DType.FLOAT32 ->
                ModelInput.Floats(FloatArray(pixels.size) { i -> floatTable[i % 3][pixels[i].toInt() and 0xFF] })
            else -> ModelInput.Bytes(ByteArray(pixels.size) { i -> byteTable[i % 3][pixels[i].toInt() and 0xFF] })
        }
    }
}
