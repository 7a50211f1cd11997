package org.spnas.demo.core

class Prediction(val index: Int, val label: String, val logit: Float, val probability: Double)

/** Output tensor -> logits -> top-k with softmax probabilities, as `spnas.android` does on the host. */
object Classification {
    /** Integer outputs are dequantized as `(q - zeroPoint) * scale` in float32. */
    fun dequantize(raw: ByteArray, tensor: TensorSpec): FloatArray = FloatArray(raw.size) { i ->
        val q = if (tensor.dtype == DType.UINT8) raw[i].toInt() and 0xFF else raw[i].toInt()
        (q - tensor.zeroPoint).toFloat() * tensor.scale
    }

    /** Softmax in double precision, shifted by the maximum so large logits cannot overflow. */
    fun softmax(logits: FloatArray): DoubleArray {
        if (logits.isEmpty()) return DoubleArray(0)
        var max = logits[0]
        for (value in logits) if (value > max) max = value
        val exps = DoubleArray(logits.size) { Math.exp(logits[it].toDouble() - max) }
        val total = exps.sum()
        return DoubleArray(exps.size) { exps[it] / total }
    }

    /** Indices of the k largest logits; equal logits rank by lower index (numpy's stable argsort). */
    fun topK(logits: FloatArray, k: Int): IntArray =
        logits.indices.sortedWith(compareByDescending<Int> { logits[it] }.thenBy { it }).take(k).toIntArray()

    fun predictions(logits: FloatArray, labels: List<String>, k: Int = 5): List<Prediction> {
        val probabilities = softmax(logits)
        return topK(logits, k).map { Prediction(it, labels[it], logits[it], probabilities[it]) }
    }
}
