package org.spnas.demo.core

import org.junit.Assert.assertEquals
import org.junit.Test

/** Expected values are numpy's: median, percentile(90), std (ddof=0) of [5, 1, 4, 2, 3, 10]. */
class LatencyStatsTest {
    @Test fun matchesNumpyDefinitions() {
        val stats = LatencyStats(listOf(5.0, 1.0, 4.0, 2.0, 3.0, 10.0))
        assertEquals(3.5, stats.medianMs, 1e-12)
        assertEquals(7.5, stats.p90Ms, 1e-12)
        assertEquals(2.91070819942883, stats.stdMs, 1e-12)
        assertEquals(1.0, stats.minMs, 0.0)
        assertEquals(10.0, stats.maxMs, 0.0)
        assertEquals(6, stats.runs)
    }

    @Test fun measureRunsWarmupPlusRuns() {
        var calls = 0
        val stats = LatencyStats.measure(warmup = 2, runs = 3) { calls++ }
        assertEquals(5, calls)
        assertEquals(3, stats.runs)
    }
}
