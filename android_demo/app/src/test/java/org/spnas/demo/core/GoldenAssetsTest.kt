package org.spnas.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import javax.imageio.ImageIO

/**
 * The synced assets on the JVM: the app's preprocessing, run on the lossless golden image, must
 * reproduce the host's crop and model input byte for byte. Needs the assets synced first
 * (`python -m spnas.cli.android --tflite ... --out android_demo/app/src/main/assets`).
 */
class GoldenAssetsTest {
    private val assets = File(System.getProperty("spnas.assets") ?: "src/main/assets")

    private fun asset(name: String): File {
        val file = File(assets, name)
        assertTrue("$file is missing: sync the assets with python -m spnas.cli.android (see android_demo/README.md)",
            file.isFile)
        return file
    }

    private val spec by lazy { ModelSpec.parse(asset("preprocessing.json").readText()) }
    private val golden by lazy { Golden.parse(asset("golden/golden.json").readText()) }

    private fun sampleCrop(): RgbImage {
        val image = ImageIO.read(asset("golden/sample.png"))
        val argb = image.getRGB(0, 0, image.width, image.height, null, 0, image.width)
        return ImageOps.resizeAndCrop(RgbImage.fromArgb(image.width, image.height, argb), spec.preprocessing)
    }

    @Test fun cropMatchesTheHostByteForByte() {
        val crop = sampleCrop()
        assertArrayEquals(asset("golden/crop.rgb").readBytes(), crop.pixels)
        assertEquals(golden.cropSha256, Golden.sha256(crop.pixels))
    }

    @Test fun modelInputMatchesTheHostByteForByte() {
        val crop = RgbImage(spec.preprocessing.inputSize, spec.preprocessing.inputSize, asset("golden/crop.rgb").readBytes())
        val encoded = InputEncoder(spec.preprocessing, spec.input, spec.inputMode).encode(crop).toLittleEndianBytes()
        assertArrayEquals(asset("golden/input.bin").readBytes(), encoded)
        assertEquals(golden.inputSha256, Golden.sha256(encoded))
    }

    @Test fun labelsHaveOneNamePerClass() {
        val labels = asset(spec.labelsFile).readLines()
        assertEquals(spec.labelCount, labels.size)
        assertEquals(spec.output.elementCount, labels.size)
    }

    @Test fun hostLogitsPassTheirOwnComparison() {
        assertEquals(emptyList<String>(), golden.compare(golden.logits))
        val shuffled = golden.logits.copyOf().also { it[golden.top5[0]] = it[golden.top5[4]] - 1f }
        assertTrue("a demoted top-1 class must be reported", golden.compare(shuffled).isNotEmpty())
    }
}
