package org.spnas.demo

import android.util.Log
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.junit.Assert.assertEquals
import org.junit.Test
import org.junit.runner.RunWith
import java.io.File

/**
 * The Benchmark screen's measurement without the screen, for device farms (`firebase_test_lab.sh`):
 * writes the report to `<external files>/spnas-bench/spnas-bench-android.json`, i.e.
 * `/sdcard/Android/data/org.spnas.demo/files/spnas-bench/`, which the farm pulls back.
 *
 * Instrumentation arguments (`am instrument -e KEY VALUE`, Firebase's `--environment-variables`):
 * `threads` (default "1,2,4"), `warmup` (10), `runs` (50), `backend` (cpu or gpu).
 */
@RunWith(AndroidJUnit4::class)
class BenchmarkInstrumentedTest {
    @Test fun benchmarkWritesTheReport() {
        val arguments = InstrumentationRegistry.getArguments()
        val context = InstrumentationRegistry.getInstrumentation().targetContext
        val threads = (arguments.getString("threads") ?: "1,2,4").split(',').map { it.trim().toInt() }
        val warmup = arguments.getString("warmup")?.toInt() ?: 10
        val runs = arguments.getString("runs")?.toInt() ?: 50
        val backend = Backend.valueOf((arguments.getString("backend") ?: "cpu").uppercase())
        val bundle = SpnasAssets.load(context.assets)
        var current: LiteRtClassifier? = null
        val results = try {
            AppBenchmark.measure(context.assets, bundle, backend, threads, warmup, runs, classifierFor = { n ->
                current?.close() // one compiled model at a time
                LiteRtClassifier.create(context.assets, bundle.spec, backend, n).also { current = it }
            }, progress = { Log.i(TAG, it) })
        } finally {
            current?.close()
        }
        val (_, file) = AppBenchmark.save(results, File(context.getExternalFilesDir(null), FOLDER))
        Log.i(TAG, "wrote ${file.absolutePath}")
        assertEquals(threads, results.map { it.threads })
    }

    companion object {
        const val TAG = "spnas-bench"
        const val FOLDER = "spnas-bench"
    }
}
