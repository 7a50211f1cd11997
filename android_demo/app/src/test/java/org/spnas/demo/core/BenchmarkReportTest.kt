package org.spnas.demo.core

import org.junit.Assert.assertEquals
import org.junit.Test

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
}
