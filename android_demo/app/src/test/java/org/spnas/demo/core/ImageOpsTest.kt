package org.spnas.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/** Expected bytes were produced by Pillow 13.0 `Image.resize(size, Image.BILINEAR or BICUBIC)` on [SOURCE_HEX]. */
class ImageOpsTest {
    private val source = RgbImage(7, 5, hex(SOURCE_HEX))

    private fun resized(width: Int, height: Int, filter: ResampleFilter = ResampleFilter.BILINEAR) =
        ImageOps.resize(source, width, height, filter).pixels

    @Test fun downscalesBothAxesLikePillow() = assertArrayEquals(hex(PIL_3X4), resized(3, 4))

    @Test fun upscalesLikePillow() = assertArrayEquals(hex(PIL_9X6), resized(9, 6))

    @Test fun resizesOnlyTheHeightLikePillow() = assertArrayEquals(hex(PIL_7X2), resized(7, 2))

    @Test fun resizesOnlyTheWidthLikePillow() = assertArrayEquals(hex(PIL_2X5), resized(2, 5))

    /** Each size below gives other bytes in the other pass order (checked against Pillow, both orders). */
    @Test fun runsThePassesInPillowsOrder() {
        assertArrayEquals(hex(PIL_6X2), resized(6, 2)) // height -3 px, width -1 px: vertical first
        assertArrayEquals(hex(PIL_8X2), resized(8, 2)) // wider and lower: vertical first
        assertArrayEquals(hex(PIL_6X3), resized(6, 3)) // height -2, width -1: not more than twice, horizontal first
        assertArrayEquals(hex(PIL_5X1), resized(5, 1)) // height -4, width -2: horizontal first
        assertArrayEquals(hex(PIL_BICUBIC_10X3), resized(10, 3, ResampleFilter.BICUBIC))
        assertArrayEquals(hex(PIL_BICUBIC_6X2), resized(6, 2, ResampleFilter.BICUBIC))
    }

    @Test fun sameSizeIsACopyOfThePixels() = assertArrayEquals(source.pixels, resized(7, 5))

    @Test fun shortSideSizeTruncatesTheLongSideLikePython() {
        assertEquals(Pair(385, 256), ImageOps.shortSideSize(578, 384, 256)) // int(256 * 578 / 384) = int(385.33)
        assertEquals(Pair(256, 341), ImageOps.shortSideSize(300, 400, 256)) // int(341.33)
        assertEquals(Pair(256, 256), ImageOps.shortSideSize(500, 500, 256))
    }

    @Test fun centerCropRoundsHalvesToEven() {
        // (341 - 224) / 2 = 58.5 -> Python round() gives 58, so the crop starts at row 58.
        val rows = RgbImage(224, 341, ByteArray(224 * 341 * 3) { i -> (i / (224 * 3)).toByte() })
        assertEquals(58, ImageOps.centerCrop(rows, 224).pixels[0].toInt())
        // (227 - 224) / 2 = 1.5 -> 2.
        val rows2 = RgbImage(224, 227, ByteArray(224 * 227 * 3) { i -> (i / (224 * 3)).toByte() })
        assertEquals(2, ImageOps.centerCrop(rows2, 224).pixels[0].toInt())
    }

    @Test fun rgbaBytesDropAlpha() {
        val image = RgbImage.fromRgba(2, 1, byteArrayOf(1, 2, 3, 99, 4, 5, 6, 0))
        assertArrayEquals(byteArrayOf(1, 2, 3, 4, 5, 6), image.pixels)
    }

    @Test fun argbIntsDropAlpha() {
        val image = RgbImage.fromArgb(2, 1, intArrayOf(0x7F0102FF, 0xFFFE8003.toInt()))
        assertArrayEquals(byteArrayOf(1, 2, 0xFF.toByte(), 0xFE.toByte(), 0x80.toByte(), 3), image.pixels)
    }

    companion object {
        const val SOURCE_HEX = "f46334b88274b4537993083cda2cbefce57b102d94089751463f83a4d257dec9e151c5a3ac89b1de76095f0c4" +
            "6221e64b23dda92c406197029387e63dc786c5f4310470a974f611b948aeb8ae17a9d7a20d249f51141c93d2b1b51d96045d441a5289a" +
            "243b914a2ff1"
        const val PIL_3X4 = "ab7161b0587fa3818a4c566d8ea58290866854295c788873917c703a4e6164976c6546a8"
        const val PIL_9X6 = "f46334cc785fb66d76ad426b93083cca24a1ed9399ada883102d94438a4a58636d827b71b0ad73cb99b8879ead9" +
            "ea0a7b98c7cab642c3b464b343464684f87ae8c95b2c6614d9f5d508a72907f6edd77435f232f401a61582e818b618293ac6559a2515" +
            "78c498a7466d864a54c433e4722654a43575a864d809dc18dae90878b5b905d7ab043f41141c92e325546783a4ed85945d441904e865d" +
            "33953137b14a2ff1"
        const val PIL_7X2 = "6b6342624a78a8837db2887b72828eaaa3889b5d56423a5a3b1b636a845f7eb280768b7460685aaa4dca"
        const val PIL_2X5 = "c05664ac61876b977fa7a48c6543686a804f5f50679c8b84417760555897"

        const val PIL_6X2 = "695e4c785c7aac857c8e858699998a9e6a5f41345c4a3c6273986d7a9c796773629c52b5"
        const val PIL_8X2 = "6b6342644f6e92717bae867c968583848c8ca7967f9b5d56423a5a3c21615b6360759e727ba17b6f806c6e636faa4dca"
        const val PIL_6X3 = "8e764b937076b07575a8659dc7a59c7e626347334752377f9d8a806ba95f5b8961c57172353b7246474c5aac61839" +
            "28b6c606e7c3fd7"
        const val PIL_5X1 = "554359705e718e9377788477986685"
        const val PIL_BICUBIC_10X3 = "8f7c3f896f61906f7baf8b6db66a76ab5893a06eb4d7b6a2a88f755f464f493933322559412885976093" +
            "b0a57e83be6335a45151875ea6756aef707033417d3a24644435474da04059b8717aa2909b748a625c5c6645a48536ff"
        const val PIL_BICUBIC_6X2 = "6d5f4677597db8847c8a80859da08c9f69583b2f5e42315e72a36d79a37a5d6b5ba04ebf"

        fun hex(text: String) = ByteArray(text.length / 2) { i -> Integer.parseInt(text.substring(2 * i, 2 * i + 2), 16).toByte() }
    }
}
