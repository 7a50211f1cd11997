package org.spnas.demo

import android.content.res.AssetManager
import org.spnas.demo.core.BenchmarkReport
import org.spnas.demo.core.BenchmarkResult
import org.spnas.demo.core.ImageOps
import org.spnas.demo.core.InputEncoder
import org.spnas.demo.core.LatencyStats
import org.spnas.demo.core.ModelInput
import java.io.File

/**
 * The Benchmark screen's measurement, shared with the instrumented run on device farms
 * (`BenchmarkInstrumentedTest`), so both report the same thing: the bundled sample preprocessed
 * (timed separately), then per thread count `warmup` untimed and `runs` timed calls of
 * `CompiledModel.run` alone.
 */
object AppBenchmark {
    /** The report's file name in the folder it is saved to (what `spnas-bench --import` reads). */
    const val REPORT_NAME = "spnas-bench-android.json"

    fun measure(
        assets: AssetManager,
        bundle: SpnasAssets,
        backend: Backend,
        threadCounts: List<Int>,
        warmup: Int,
        runs: Int,
        classifierFor: (threads: Int) -> LiteRtClassifier,
        progress: (String) -> Unit = {},
    ): List<BenchmarkResult> {
        val image = assets.open(SpnasAssets.SAMPLE).use(ImageDecoding::decode)
        val encoder = InputEncoder(bundle.spec.preprocessing, bundle.spec.input, bundle.spec.inputMode)
        lateinit var input: ModelInput
        val preprocess = LatencyStats.measure(warmup = 1, runs = DemoViewModel.PREPROCESS_RUNS) {
            input = encoder.encode(ImageOps.resizeAndCrop(image, bundle.spec.preprocessing))
        }
        return threadCounts.map { threads ->
            progress("${backend.label}, $threads thread(s): $warmup warmup + $runs runs")
            val model = classifierFor(threads)
            model.write(input)
            val stats = LatencyStats.measure(warmup, runs) { model.run() }
            BenchmarkResult(bundle.spec.sourceFile, bundle.spec.precision, backend.label, threads, warmup, stats,
                preprocess, bundle.spec.modelSizeBytes)
        }
    }

    /** The report (`BenchmarkReport`'s JSON, with this phone's facts) written to `folder/REPORT_NAME`. */
    fun save(results: List<BenchmarkResult>, folder: File): Pair<String, File> {
        val json = BenchmarkReport.toJson(results, DeviceInfo.facts(), "android-demo ${BuildConfig.VERSION_NAME}")
        folder.mkdirs()
        val file = File(folder, REPORT_NAME)
        file.writeText(json)
        return json to file
    }
}
