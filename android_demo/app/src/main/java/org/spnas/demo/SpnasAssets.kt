package org.spnas.demo

import android.content.res.AssetManager
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import org.spnas.demo.core.ModelSpec
import org.spnas.demo.core.RgbImage
import java.io.InputStream
import java.nio.ByteBuffer

/** The synced assets: model spec, class names and the bundled sample image (see `spnas/android.py`). */
class SpnasAssets(val spec: ModelSpec, val labels: List<String>) {
    companion object {
        const val PREPROCESSING = "preprocessing.json"
        const val GOLDEN = "golden/golden.json"
        const val SAMPLE = "golden/sample.png"
        const val CROP = "golden/crop.rgb"
        const val INPUT = "golden/input.bin"

        fun load(assets: AssetManager): SpnasAssets {
            val spec = ModelSpec.parse(readText(assets, PREPROCESSING))
            val labels = readText(assets, spec.labelsFile).lines().filter { it.isNotEmpty() }
            require(labels.size == spec.labelCount) { "${spec.labelsFile} has ${labels.size} names, expected ${spec.labelCount}" }
            return SpnasAssets(spec, labels)
        }

        fun readText(assets: AssetManager, name: String): String = assets.open(name).use { it.readBytes().toString(Charsets.UTF_8) }

        fun readBytes(assets: AssetManager, name: String): ByteArray = assets.open(name).use { it.readBytes() }
    }
}

/** Image decoding that keeps the raw RGB values the host's Pillow sees. */
object ImageDecoding {
    /**
     * Decodes without premultiplying alpha and without colour-space conversion (the decoder keeps the
     * file's own colour space), then copies the bytes as stored (`copyPixelsToBuffer`, RGBA order),
     * because `Bitmap.getPixels` would convert to sRGB and Pillow does not. Like Pillow's `Image.open`,
     * `BitmapFactory` ignores EXIF orientation.
     */
    fun decode(stream: InputStream): RgbImage {
        val options = BitmapFactory.Options().apply {
            inPreferredConfig = Bitmap.Config.ARGB_8888
            inPremultiplied = false
            inScaled = false
        }
        val bitmap = BitmapFactory.decodeStream(stream, null, options)
            ?: throw IllegalArgumentException("not a decodable image")
        try {
            val rgba = ByteBuffer.allocate(bitmap.width * bitmap.height * 4)
            bitmap.copyPixelsToBuffer(rgba)
            return RgbImage.fromRgba(bitmap.width, bitmap.height, rgba.array())
        } finally {
            bitmap.recycle()
        }
    }

    /** A displayable bitmap of an RGB image (the 224 x 224 crop: what the model sees). */
    fun toBitmap(image: RgbImage): Bitmap {
        val colors = IntArray(image.width * image.height) { i ->
            val r = image.pixels[i * 3].toInt() and 0xFF
            val g = image.pixels[i * 3 + 1].toInt() and 0xFF
            val b = image.pixels[i * 3 + 2].toInt() and 0xFF
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
        return Bitmap.createBitmap(colors, image.width, image.height, Bitmap.Config.ARGB_8888)
    }
}
