package org.spnas.demo.core

/** An RGB image as packed bytes: pixel (x, y) channel c is `pixels[(y * width + x) * 3 + c]`. */
class RgbImage(val width: Int, val height: Int, val pixels: ByteArray) {
    init {
        require(width > 0 && height > 0 && pixels.size == width * height * 3) {
            "RgbImage ${width}x$height needs ${width * height * 3} bytes, got ${pixels.size}"
        }
    }

    companion object {
        /** From RGBA bytes (Android's `Bitmap.copyPixelsToBuffer` order for ARGB_8888); alpha is dropped. */
        fun fromRgba(width: Int, height: Int, rgba: ByteArray): RgbImage {
            val rgb = ByteArray(width * height * 3)
            for (i in 0 until width * height) {
                rgb[i * 3] = rgba[i * 4]
                rgb[i * 3 + 1] = rgba[i * 4 + 1]
                rgb[i * 3 + 2] = rgba[i * 4 + 2]
            }
            return RgbImage(width, height, rgb)
        }

        /** From packed 0xAARRGGBB ints (`java.awt.image.BufferedImage.getRGB`, `Bitmap.getPixels`); alpha is dropped. */
        fun fromArgb(width: Int, height: Int, argb: IntArray): RgbImage {
            val rgb = ByteArray(width * height * 3)
            for (i in 0 until width * height) {
                rgb[i * 3] = (argb[i] shr 16).toByte()
                rgb[i * 3 + 1] = (argb[i] shr 8).toByte()
                rgb[i * 3 + 2] = argb[i].toByte()
            }
            return RgbImage(width, height, rgb)
        }
    }
}

/** Pillow's resampling filters (`Resample.c`): support and kernel, in Pillow's own arithmetic order. */
enum class ResampleFilter(val support: Double) {
    BILINEAR(1.0) {
        override fun weight(x: Double): Double {
            val d = Math.abs(x)
            return if (d < 1.0) 1.0 - d else 0.0
        }
    },
    BICUBIC(2.0) {
        override fun weight(x: Double): Double {
            val a = -0.5
            val d = Math.abs(x)
            return when {
                d < 1.0 -> ((a + 2.0) * d - (a + 3.0)) * d * d + 1
                d < 2.0 -> (((d - 5) * d + 8) * d - 4) * a
                else -> 0.0
            }
        }
    };

    abstract fun weight(x: Double): Double

    companion object {
        fun of(name: String): ResampleFilter = when (name) {
            "bilinear" -> BILINEAR
            "bicubic" -> BICUBIC
            else -> throw IllegalArgumentException("interpolation $name: this app implements bilinear and bicubic")
        }
    }
}

/**
 * The host's `spnas.preprocess.resize_and_crop`, bit for bit.
 *
 * The host resizes with Pillow's `Image.resize(size, BILINEAR or BICUBIC)`, which antialiases when
 * it downscales (the filter widens by the scale factor). Android's `Bitmap.createScaledBitmap`
 * does not, so the resampler below is Pillow's `Resample.c` algorithm transcribed: double-precision
 * filter weights, normalised and rounded to 22-bit fixed point, and two passes, each rounded to uint8,
 * in the order Pillow runs them ([verticalFirst]). Same integers in, same integers out.
 */
object ImageOps {
    private const val PRECISION_BITS = 32 - 8 - 2

    /** Resize the short side to `spec.resizeSize` and center-crop `spec.inputSize`, as the host does. */
    fun resizeAndCrop(image: RgbImage, spec: PreprocessingSpec): RgbImage {
        val (width, height) = shortSideSize(image.width, image.height, spec.resizeSize)
        return centerCrop(resize(image, width, height, spec.filter), spec.inputSize)
    }

    /** Output size with the short side at `target`; the long side is truncated like Python's `int()`. */
    fun shortSideSize(width: Int, height: Int, target: Int): Pair<Int, Int> {
        val short = minOf(width, height)
        val long = maxOf(width, height)
        val newLong = ((target.toLong() * long).toDouble() / short).toInt()
        return if (width <= height) Pair(target, newLong) else Pair(newLong, target)
    }

    /** Center crop; offsets use Python's `round`, which rounds halves to even (`Math.rint`). */
    fun centerCrop(image: RgbImage, size: Int): RgbImage {
        require(image.width >= size && image.height >= size) { "cannot crop $size from ${image.width}x${image.height}" }
        val top = Math.rint((image.height - size) / 2.0).toInt()
        val left = Math.rint((image.width - size) / 2.0).toInt()
        val out = ByteArray(size * size * 3)
        for (y in 0 until size) {
            System.arraycopy(image.pixels, ((top + y) * image.width + left) * 3, out, y * size * 3, size * 3)
        }
        return RgbImage(size, size, out)
    }

    /** Pillow's BILINEAR or BICUBIC resize of an RGB image (antialiased when downscaling). */
    fun resize(image: RgbImage, outWidth: Int, outHeight: Int, filter: ResampleFilter): RgbImage {
        val horizontal = { current: RgbImage ->
            if (outWidth == image.width) current
            else horizontalPass(current, outWidth, coefficients(image.width, outWidth, filter))
        }
        val vertical = { current: RgbImage ->
            if (outHeight == image.height) current
            else verticalPass(current, outHeight, coefficients(image.height, outHeight, filter))
        }
        return if (verticalFirst(image.width, image.height, outWidth, outHeight)) horizontal(vertical(image))
        else vertical(horizontal(image))
    }

    /**
     * Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels
     * as the width does (a tall photo brought to a 256 px width, any width enlargement with a height
     * reduction); earlier Pillow always ran the horizontal pass first. Each pass rounds to uint8, so the
     * order changes pixels by 1. Found by comparing both orders with Pillow 13.0 on real photos and on
     * random images of random sizes (`tests/test_android_assets.py` runs this code against Pillow).
     */
    fun verticalFirst(width: Int, height: Int, outWidth: Int, outHeight: Int): Boolean =
        outHeight < height && 2 * (width - outWidth) < height - outHeight

    /** For each output index: first input index, tap count, and fixed-point weights (`kernelSize` per output). */
    class Coefficients(val kernelSize: Int, val first: IntArray, val count: IntArray, val weights: IntArray)

    fun coefficients(inSize: Int, outSize: Int, filter: ResampleFilter): Coefficients {
        val scale = inSize.toDouble() / outSize
        val filterScale = maxOf(scale, 1.0)
        val support = filter.support * filterScale
        val kernelSize = Math.ceil(support).toInt() * 2 + 1
        val first = IntArray(outSize)
        val count = IntArray(outSize)
        val weights = IntArray(outSize * kernelSize)
        val raw = DoubleArray(kernelSize)
        for (xx in 0 until outSize) {
            val center = (xx + 0.5) * scale
            val inverse = 1.0 / filterScale
            val xmin = maxOf((center - support + 0.5).toInt(), 0)
            val xmax = minOf((center + support + 0.5).toInt(), inSize) - xmin
            var total = 0.0
            for (x in 0 until xmax) {
                val w = filter.weight((x + xmin - center + 0.5) * inverse)
                raw[x] = w
                total += w
            }
            for (x in 0 until xmax) {
                val w = if (total != 0.0) raw[x] / total else raw[x]
                val fixed = w * (1 shl PRECISION_BITS)
                weights[xx * kernelSize + x] = if (w < 0) (-0.5 + fixed).toInt() else (0.5 + fixed).toInt()
            }
            first[xx] = xmin
            count[xx] = xmax
        }
        return Coefficients(kernelSize, first, count, weights)
    }

    private fun clip8(sum: Int): Byte = when {
        sum >= (1 shl PRECISION_BITS shl 8) -> 255.toByte()
        sum <= 0 -> 0
        else -> (sum shr PRECISION_BITS).toByte()
    }

    private fun horizontalPass(image: RgbImage, outWidth: Int, k: Coefficients): RgbImage {
        val src = image.pixels
        val out = ByteArray(outWidth * image.height * 3)
        for (y in 0 until image.height) {
            val row = y * image.width
            for (xx in 0 until outWidth) {
                val base = xx * k.kernelSize
                for (c in 0 until 3) {
                    var sum = 1 shl (PRECISION_BITS - 1)
                    for (x in 0 until k.count[xx]) {
                        sum += (src[(row + k.first[xx] + x) * 3 + c].toInt() and 0xFF) * k.weights[base + x]
                    }
                    out[(y * outWidth + xx) * 3 + c] = clip8(sum)
                }
            }
        }
        return RgbImage(outWidth, image.height, out)
    }

    private fun verticalPass(image: RgbImage, outHeight: Int, k: Coefficients): RgbImage {
        val src = image.pixels
        val width = image.width
        val out = ByteArray(width * outHeight * 3)
        for (yy in 0 until outHeight) {
            val base = yy * k.kernelSize
            for (x in 0 until width) {
                for (c in 0 until 3) {
                    var sum = 1 shl (PRECISION_BITS - 1)
                    for (y in 0 until k.count[yy]) {
                        sum += (src[((k.first[yy] + y) * width + x) * 3 + c].toInt() and 0xFF) * k.weights[base + y]
                    }
                    out[(yy * width + x) * 3 + c] = clip8(sum)
                }
            }
        }
        return RgbImage(width, outHeight, out)
    }
}
