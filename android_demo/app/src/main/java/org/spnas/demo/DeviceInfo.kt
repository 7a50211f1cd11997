package org.spnas.demo

import android.os.Build
import java.io.File

/** Device facts under the keys `spnas-bench --adb` records from `getprop`, so reports line up. */
object DeviceInfo {
    fun facts(): Map<String, Any?> = linkedMapOf(
        "model" to Build.MODEL,
        "manufacturer" to Build.MANUFACTURER,
        "board_platform" to Build.BOARD, // ro.product.board; ro.board.platform is not readable through the SDK
        "soc_model" to if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) Build.SOC_MODEL else null,
        "abi" to Build.SUPPORTED_ABIS.firstOrNull(),
        "android_release" to Build.VERSION.RELEASE,
        "sdk" to Build.VERSION.SDK_INT.toString(),
        "cpu_max_freq_mhz" to cpuMaxFrequenciesMhz(),
    )

    /** `cpuN -> MHz` from sysfs (world-readable on most devices; empty where it is not). */
    fun cpuMaxFrequenciesMhz(): Map<String, Double> {
        val cpus = File("/sys/devices/system/cpu").listFiles { file -> file.name.matches(Regex("cpu\\d+")) } ?: return emptyMap()
        val result = LinkedHashMap<String, Double>()
        for (cpu in cpus.sortedBy { it.name.removePrefix("cpu").toInt() }) {
            val khz = runCatching { File(cpu, "cpufreq/cpuinfo_max_freq").readText().trim().toDouble() }.getOrNull()
            if (khz != null) result[cpu.name] = khz / 1000.0
        }
        return result
    }
}
