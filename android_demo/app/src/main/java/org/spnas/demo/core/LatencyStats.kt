package org.spnas.demo.core

/**
 * Summary of repeated timings in milliseconds, with numpy's definitions so phone and host figures
 * compare: median and p90 interpolate linearly between order statistics (`np.percentile`
 * default), std is the population standard deviation (`np.std`, ddof=0).
 */
class LatencyStats(samplesMs: List<Double>) {
    val samplesMs: List<Double> = samplesMs.toList()
    val runs: Int = samplesMs.size
    val medianMs: Double
    val p90Ms: Double
    val minMs: Double
    val maxMs: Double
    val meanMs: Double
    val stdMs: Double

    init {
        require(samplesMs.isNotEmpty()) { "no timings" }
        val sorted = samplesMs.sorted()
        medianMs = percentile(sorted, 50.0)
        p90Ms = percentile(sorted, 90.0)
        minMs = sorted.first()
        maxMs = sorted.last()
        var total = 0.0
        for (sample in sorted) total += sample
        meanMs = total / runs
        var squares = 0.0
        for (sample in sorted) squares += (sample - meanMs) * (sample - meanMs)
        stdMs = Math.sqrt(squares / runs)
    }

    companion object {
        fun percentile(sorted: List<Double>, q: Double): Double {
            val rank = (sorted.size - 1) * q / 100.0
            val below = Math.floor(rank).toInt()
            val above = minOf(below + 1, sorted.size - 1)
            return sorted[below] + (sorted[above] - sorted[below]) * (rank - below)
        }

        /** Times `block` `runs` times after `warmup` untimed calls, each run measured with `System.nanoTime`. */
        fun measure(warmup: Int, runs: Int, block: () -> Unit): LatencyStats {
            require(runs >= 1 && warmup >= 0) { "runs must be >= 1 and warmup >= 0" }
            repeat(warmup) { block() }
            val samples = ArrayList<Double>(runs)
            repeat(runs) {
                val start = System.nanoTime()
                block()
                samples.add((System.nanoTime() - start) / 1e6)
            }
            return LatencyStats(samples)
        }
    }
}
