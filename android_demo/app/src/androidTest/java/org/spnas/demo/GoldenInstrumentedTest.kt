package org.spnas.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test
import org.junit.runner.RunWith
import org.spnas.demo.core.Classification
import org.spnas.demo.core.DType
import org.spnas.demo.core.Golden
import org.spnas.demo.core.ImageOps
import org.spnas.demo.core.InputEncoder
import org.spnas.demo.core.ModelInput
import org.spnas.demo.core.RgbImage
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The phone computes what the host computed (`golden/golden.json`, from `spnas.android.sync_assets`):
 * the host's exact input tensor through on-device LiteRT gives the host's top-5, and the app's own
 * decoding and preprocessing of the sample reproduce the host's crop and input byte for byte.
 */
@RunWith(AndroidJUnit4::class)
class GoldenInstrumentedTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext
    private val assets = context.assets
    private val bundle = SpnasAssets.load(assets)
    private val golden = Golden.parse(SpnasAssets.readText(assets, SpnasAssets.GOLDEN))

    private fun goldenInput(): ModelInput {
        val bytes = SpnasAssets.readBytes(assets, SpnasAssets.INPUT)
        assertEquals(golden.inputSha256, Golden.sha256(bytes))
        return if (golden.inputDtype == DType.FLOAT32) {
            val floats = FloatArray(bytes.size / 4)
            ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(floats)
            ModelInput.Floats(floats)
        } else {
            ModelInput.Bytes(bytes)
        }
    }

    private fun assertMatchesHost(backend: Backend, threads: Int) {
        LiteRtClassifier.create(assets, bundle.spec, backend, threads).use { model ->
            model.write(goldenInput())
            model.run()
            val logits = model.readLogits()
            val problems = golden.compare(logits)
            assertEquals("on-device top-5 ${Classification.topK(logits, 5).toList()} vs host ${golden.top5.toList()}: " +
                problems.joinToString("; "), emptyList<String>(), problems)
        }
    }

    @Test fun goldenInputGivesTheHostTop5OnOneCpuThread() = assertMatchesHost(Backend.CPU, 1)

    @Test fun goldenInputGivesTheHostTop5OnFourCpuThreads() = assertMatchesHost(Backend.CPU, 4)

    @Test fun appPreprocessingOfTheSampleReproducesTheHostCrop() {
        val image = assets.open(SpnasAssets.SAMPLE).use(ImageDecoding::decode)
        val crop = ImageOps.resizeAndCrop(image, bundle.spec.preprocessing)
        assertArrayEquals(SpnasAssets.readBytes(assets, SpnasAssets.CROP), crop.pixels)
        assertEquals(golden.cropSha256, Golden.sha256(crop.pixels))
    }

    @Test fun appEncodingOfTheCropReproducesTheHostInput() {
        val crop = RgbImage(bundle.spec.preprocessing.inputSize, bundle.spec.preprocessing.inputSize,
            SpnasAssets.readBytes(assets, SpnasAssets.CROP))
        val encoded = InputEncoder(bundle.spec.preprocessing, bundle.spec.input, bundle.spec.inputMode).encode(crop)
        assertArrayEquals(SpnasAssets.readBytes(assets, SpnasAssets.INPUT), encoded.toLittleEndianBytes())
    }
}
