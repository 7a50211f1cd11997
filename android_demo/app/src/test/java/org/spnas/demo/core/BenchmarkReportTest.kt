package org.spnas.demo.core

import org.junit.Assert.assertEquals
import org.junit.Test
import java.io.File

class BenchmarkReportTest {
    private fun result(threads: Int, samples: List<Double>) = BenchmarkResult("spnasnet_100_int8.tflite", "int8", "cpu",
        threads, 2, LatencyStats(samples), LatencyStats(listOf(1.0)), 1234L)

    @Test fun writesTheSpnasBenchSchema() {
        val text = BenchmarkReport.toJson(
            listOf(result(1, listOf(10.0, 12.0, 11.0)), result(1, listOf(5.0, 6.0, 7.0)), result(2, listOf(8.0))),
            linkedMapOf("model" to "Pixel 8", "cpu_max_freq_mhz" to linkedMapOf("cpu0" to 1700.0)), "0.1.0")
        val root = JsonObject.parse(text)
        assertEquals("android-app", root.string("mode"))
        assertEquals("Pixel 8", root.obj("device").string("model"))
        assertEquals(listOf(1.0, 2.0), root.obj("settings").list("threads"))
        val records = root.objects("results")
        assertEquals(3, records.size)
        val latency = records[0].obj("latency_ms")
        assertEquals(11.0, latency.double("median"), 0.0)
        assertEquals(3, latency.int("n_runs"))
        assertEquals(1234, records[0].int("size_bytes"))
        assertEquals(6.0 / 11.0, records[1].double("ratio_vs_first"), 1e-12) // medians 6 ms vs 11 ms, both 1 thread
        assertEquals(1.0, records[2].double("ratio_vs_first"), 0.0) // first record at 2 threads
        assertEquals(1.0, records[0].obj("preprocess_ms").double("median"), 0.0)
    }

    /** tests/data/android_app/spnas-bench-android.json, read by `spnas-bench --import` in the host tests, is
     *  exactly what this writer produces for these (invented) timings. */
    @Test fun hostImportExampleIsThisWritersOutput() {
        val preprocessing = LatencyStats(listOf(3.91, 3.87, 4.02, 3.95, 3.89))
        val timings = linkedMapOf(
            1 to listOf(19.42, 19.37, 19.61, 19.48, 20.13, 19.44, 19.52, 19.39),
            2 to listOf(10.91, 10.84, 11.02, 10.88, 11.37, 10.86, 10.95, 10.9),
            4 to listOf(6.48, 6.41, 6.57, 6.44, 7.02, 6.46, 6.5, 6.43),
        )
        val results = timings.map { (threads, samples) ->
            BenchmarkResult("spnasnet_100_int8.tflite", "int8", "cpu", threads, 10, LatencyStats(samples), preprocessing,
                4815624L)
        }
        val frequencies = linkedMapOf<String, Any?>()
        listOf(1803.0, 1803.0, 1803.0, 1803.0, 2253.0, 2253.0, 2802.0, 2802.0).forEachIndexed { i, mhz ->
            frequencies["cpu$i"] = mhz
        }
        val device = linkedMapOf<String, Any?>("model" to "Pixel 6", "manufacturer" to "Google",
            "board_platform" to "oriole", "soc_model" to "GS101", "abi" to "arm64-v8a", "android_release" to "14",
            "sdk" to "34", "cpu_max_freq_mhz" to frequencies)
        val example = File(System.getProperty("spnas.benchExample")).readText()
        assertEquals(example, BenchmarkReport.toJson(results, device, "android-demo 0.1.0"))
    }
}
