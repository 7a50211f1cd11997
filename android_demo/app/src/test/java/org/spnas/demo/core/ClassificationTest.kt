package org.spnas.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

class ClassificationTest {
    @Test fun topKBreaksTiesByLowerIndex() {
        val logits = floatArrayOf(0.5f, 2f, -1f, 2f, 1f)
        assertArrayEquals(intArrayOf(1, 3, 4), Classification.topK(logits, 3))
    }

    @Test fun softmaxSumsToOneAndSurvivesLargeLogits() {
        val probabilities = Classification.softmax(floatArrayOf(1000f, 1000f, 0f))
        assertEquals(0.5, probabilities[0], 1e-12)
        assertEquals(1.0, probabilities.sum(), 1e-12)
    }

    @Test fun dequantizesInt8AndUint8() {
        val int8 = TensorSpec("out", intArrayOf(1, 2), DType.INT8, 0.5f, -3)
        assertArrayEquals(floatArrayOf(-62.5f, 1.5f), Classification.dequantize(byteArrayOf(-128, 0), int8), 0f)
        val uint8 = TensorSpec("out", intArrayOf(1, 2), DType.UINT8, 0.25f, 128)
        assertArrayEquals(floatArrayOf(31.75f, -32f), Classification.dequantize(byteArrayOf(-1, 0), uint8), 0f)
    }

    @Test fun predictionsCarryLabelsAndProbabilities() {
        val top = Classification.predictions(floatArrayOf(0f, 3f, 1f), listOf("a", "b", "c"), 2)
        assertEquals(listOf("b", "c"), top.map { it.label })
        assertEquals(Math.exp(3.0) / (1 + Math.exp(3.0) + Math.exp(1.0)), top[0].probability, 1e-12)
    }
}
