package org.spnas.demo.core

/**
 * `golden/golden.json`: the host's crop, model input and LiteRT logits for the bundled sample.
 *
 * The phone's kernels (ARM XNNPACK) may round a few int8 intermediate values differently from the
 * host's (x86 XNNPACK), so the comparison allows each logit to move by `logitTolerance` and lets two
 * classes swap ranks only when their host logits are within `tieTolerance` of each other.
 */
class Golden(
    val cropSha256: String,
    val inputSha256: String,
    val inputDtype: DType,
    val logits: FloatArray,
    val top5: IntArray,
    val tieTolerance: Float,
    val logitTolerance: Float,
) {
    /** Problems found comparing the phone's logits with the host's; empty when they agree. */
    fun compare(deviceLogits: FloatArray): List<String> {
        if (deviceLogits.size != logits.size) return listOf("${deviceLogits.size} logits, host has ${logits.size}")
        val problems = ArrayList<String>()
        val deviceTop = Classification.topK(deviceLogits, top5.size)
        for (rank in top5.indices) {
            val gap = Math.abs(logits[deviceTop[rank]] - logits[top5[rank]])
            if (gap > tieTolerance) {
                problems.add("rank ${rank + 1}: phone class ${deviceTop[rank]}, host class ${top5[rank]} " +
                    "(host logits differ by $gap > tie tolerance $tieTolerance)")
            }
        }
        var worst = 0
        for (i in logits.indices) {
            if (Math.abs(deviceLogits[i] - logits[i]) > Math.abs(deviceLogits[worst] - logits[worst])) worst = i
        }
        val worstDiff = Math.abs(deviceLogits[worst] - logits[worst])
        if (worstDiff > logitTolerance) {
            problems.add("logit $worst differs by $worstDiff > tolerance $logitTolerance")
        }
        return problems
    }

    companion object {
        fun parse(text: String): Golden {
            val root = JsonObject.parse(text)
            val input = root.obj("input")
            return Golden(
                cropSha256 = root.obj("crop").string("sha256"),
                inputSha256 = input.string("sha256"),
                inputDtype = DType.of(input.string("dtype")),
                logits = root.doubles("logits").map { it.toFloat() }.toFloatArray(),
                top5 = root.objects("top5").map { it.int("index") }.toIntArray(),
                tieTolerance = root.double("top5_tie_tolerance").toFloat(),
                logitTolerance = root.double("logit_tolerance").toFloat(),
            )
        }

        fun sha256(bytes: ByteArray): String =
            java.security.MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") {
                String.format("%02x", it.toInt() and 0xFF)
            }
    }
}
