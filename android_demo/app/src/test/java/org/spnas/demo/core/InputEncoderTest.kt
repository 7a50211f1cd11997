package org.spnas.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/** Expected values are numpy's: `spnas.preprocess.normalize` then `clip(rint(v / scale) + zp)`. */
class InputEncoderTest {
    private val preprocessing = PreprocessingSpec(224, 256, floatArrayOf(0.485f, 0.456f, 0.406f),
        floatArrayOf(0.229f, 0.224f, 0.225f), 255f)
    private val pixels = RgbImage(4, 1, byteArrayOf(0, 0, 0, 255.toByte(), 255.toByte(), 255.toByte(), 124, 116, 104,
        37, 200.toByte(), 91))

    private fun tensor(dtype: DType, scale: Float, zeroPoint: Int) =
        TensorSpec("input", intArrayOf(1, 1, 4, 3), dtype, scale, zeroPoint)

    @Test fun float32MatchesNumpyNormalize() {
        val encoded = InputEncoder(preprocessing, tensor(DType.FLOAT32, 0f, 0), InputMode.NORMALIZED).encode(pixels)
        val expected = floatArrayOf(-2.117904f, -2.0357141f, -1.8044444f, 2.2489083f, 2.4285715f, 2.64f, 0.00556549f,
            -0.00490195f, 0.0081918f, -1.4842881f, 1.4656863f, -0.21838771f)
        assertArrayEquals(expected, (encoded as ModelInput.Floats).values, 1e-6f)
    }

    @Test fun int8MatchesNumpyQuantization() {
        val encoded = InputEncoder(preprocessing, tensor(DType.INT8, 0.01865844801068306f, -14), InputMode.NORMALIZED)
            .encode(pixels) as ModelInput.Bytes
        assertArrayEquals(intArrayOf(-128, -123, -111, 107, 116, 127, -14, -14, -14, -94, 65, -26),
            encoded.values.map { it.toInt() }.toIntArray())
    }

    @Test fun uint8MatchesNumpyQuantization() {
        val encoded = InputEncoder(preprocessing, tensor(DType.UINT8, 0.0186584480f, 114), InputMode.NORMALIZED)
            .encode(pixels) as ModelInput.Bytes
        assertArrayEquals(intArrayOf(0, 5, 17, 235, 244, 255, 114, 114, 114, 34, 193, 102),
            encoded.values.map { it.toInt() and 0xFF }.toIntArray())
    }

    @Test fun rawPixelModeFeedsPixelsThrough() {
        val encoded = InputEncoder(preprocessing, tensor(DType.UINT8, 1f, 0), InputMode.PIXELS)
            .encode(pixels) as ModelInput.Bytes
        assertArrayEquals(pixels.pixels, encoded.values)
    }

    @Test fun floatBytesAreLittleEndian() {
        val bytes = ModelInput.Floats(floatArrayOf(1f)).toLittleEndianBytes()
        assertEquals(listOf(0, 0, 0x80, 0x3f), bytes.map { it.toInt() and 0xFF })
    }
}
