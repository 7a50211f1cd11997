package org.spnas.demo.core

/** One (artifact, accelerator, thread count) measurement on the phone. */
class BenchmarkResult(
    val artifact: String,
    val precision: String,
    val accelerator: String,
    val threads: Int,
    val warmup: Int,
    val inference: LatencyStats,
    val preprocessing: LatencyStats?,
    val modelSizeBytes: Long,
)

/**
 * The JSON document `spnas-bench` writes (`spnas/bench/host.py`, `spnas/bench/adb.py`), so results
 * from the app, the host and `spnas-bench --adb` load with the same code:
 *
 * `{"spnas_version", "mode": "android-app", "device": {...}, "settings": {...}, "results": [...]}`,
 * each result with `artifact, path, format, precision, threads, runtime, size_bytes,
 * latency_ms {n_runs, mean, median, p90, min, max, std}, warmup_runs, peak_rss_mb, ratio_vs_first`.
 * App-only fields: `accelerator` and `preprocess_ms` (same statistics, timed separately).
 */
object BenchmarkReport {
    const val RUNTIME = "LiteRT CompiledModel in the Android app"
    const val TIMED = "CompiledModel.run only (input buffer written once before timing)"

    fun latency(stats: LatencyStats): Map<String, Any?> = linkedMapOf(
        "n_runs" to stats.runs,
        "mean" to stats.meanMs,
        "median" to stats.medianMs,
        "p90" to stats.p90Ms,
        "min" to stats.minMs,
        "max" to stats.maxMs,
        "std" to stats.stdMs,
    )

    /** Records in order; `ratio_vs_first` divides each median by the first record's at the same thread count. */
    fun records(results: List<BenchmarkResult>): List<Map<String, Any?>> {
        val firstByThreads = HashMap<Int, Double>()
        return results.map { result ->
            val first = firstByThreads.getOrPut(result.threads) { result.inference.medianMs }
            linkedMapOf(
                "artifact" to result.artifact,
                "path" to null,
                "format" to "tflite",
                "precision" to result.precision,
                "threads" to result.threads,
                "runtime" to "$RUNTIME (${result.accelerator})",
                "accelerator" to result.accelerator,
                "size_bytes" to result.modelSizeBytes,
                "latency_ms" to latency(result.inference),
                "preprocess_ms" to result.preprocessing?.let { latency(it) },
                "warmup_runs" to result.warmup,
                "peak_rss_mb" to null,
                "ratio_vs_first" to if (first > 0) result.inference.medianMs / first else null,
            )
        }
    }

    /** `device` uses `spnas-bench --adb`'s keys: model, manufacturer, soc_model, abi, android_release, sdk, cpu_max_freq_mhz. */
    fun toJson(results: List<BenchmarkResult>, device: Map<String, Any?>, appVersion: String): String {
        require(results.isNotEmpty()) { "no benchmark results" }
        return Json.write(
            linkedMapOf(
                "spnas_version" to appVersion,
                "mode" to "android-app",
                "device" to device,
                "settings" to linkedMapOf(
                    "threads" to results.map { it.threads }.distinct(),
                    "warmup_runs" to results[0].warmup,
                    "runs" to results[0].inference.runs,
                    "timed" to TIMED,
                ),
                "results" to records(results),
            ),
        )
    }
}
