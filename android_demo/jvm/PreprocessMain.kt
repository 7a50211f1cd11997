package org.spnas.demo.core

import java.awt.image.IndexColorModel
import java.io.File
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import javax.imageio.ImageIO
import kotlin.system.exitProcess

/**
 * The app's preprocessing on the JVM, for checks from outside the app: writes the exact bytes the app
 * feeds the model (`--out`, little-endian like `golden/input.bin`) and optionally the RGB crop
 * (`--crop`, like `golden/crop.rgb`), using the same `core/` code the app runs after decoding.
 *
 *     java -cp spnas-core.jar org.spnas.demo.core.PreprocessMain --spec preprocessing.json \
 *         --image photo.png --out input.bin [--crop crop.rgb] [--image next.png --out next.bin ...]
 *
 * Each `--image` starts a new image, so one JVM start serves many. Nothing is written unless every
 * image succeeds. Lives outside `app/src` because `javax.imageio` does not exist on Android, where
 * `BitmapFactory` decodes instead.
 */
object PreprocessMain {
    private class Job(val image: File) {
        var out: File? = null
        var crop: File? = null
    }

    @JvmStatic
    fun main(args: Array<String>) {
        try {
            run(args)
        } catch (e: IllegalArgumentException) {
            System.err.println("error: ${e.message}")
            exitProcess(2)
        } catch (e: java.io.IOException) {
            System.err.println("error: ${e.message}")
            exitProcess(2)
        }
    }

    private fun run(args: Array<String>) {
        var spec: File? = null
        val jobs = ArrayList<Job>()
        var i = 0
        while (i < args.size) {
            val value = args.getOrNull(i + 1) ?: throw IllegalArgumentException("${args[i]} needs a value")
            when (args[i]) {
                "--spec" -> spec = File(value)
                "--image" -> jobs.add(Job(File(value)))
                "--out" -> (jobs.lastOrNull() ?: throw IllegalArgumentException("--out before any --image")).out = File(value)
                "--crop" -> (jobs.lastOrNull() ?: throw IllegalArgumentException("--crop before any --image")).crop = File(value)
                else -> throw IllegalArgumentException("unknown argument ${args[i]} (--spec, --image, --out, --crop)")
            }
            i += 2
        }
        val specFile = spec ?: throw IllegalArgumentException(
            "usage: PreprocessMain --spec preprocessing.json --image IMG --out input.bin [--crop crop.rgb] ...")
        require(jobs.isNotEmpty()) { "no --image given" }
        require(specFile.isFile) { "$specFile: no such file" }
        val model = ModelSpec.parse(specFile.readText())
        val encoder = InputEncoder(model.preprocessing, model.input, model.inputMode)
        val outputs = ArrayList<Pair<File, ByteArray>>()
        for (job in jobs) {
            val out = job.out ?: throw IllegalArgumentException("--image ${job.image} has no --out")
            val crop = ImageOps.resizeAndCrop(decode(job.image), model.preprocessing)
            outputs.add(out to encoder.encode(crop).toLittleEndianBytes())
            job.crop?.let { outputs.add(it to crop.pixels) }
        }
        for ((file, bytes) in outputs) writeAtomically(file, bytes)
    }

    /**
     * The pixel values as stored in the file, like Pillow's `Image.open(path).convert("RGB")`: samples
     * are read from the raster (no colour-space or gamma conversion, grey replicated, alpha dropped),
     * and palette images take their palette's colours. PNG decodes to the same values as Pillow; JPEG
     * does not always (ImageIO's decoder and libjpeg may differ by one level), so decode JPEGs with
     * Pillow and pass a PNG when the comparison must be exact.
     */
    fun decode(file: File): RgbImage {
        require(file.isFile) { "$file: no such file" }
        val image = ImageIO.read(file) ?: throw IllegalArgumentException("$file: not an image ImageIO can decode")
        val width = image.width
        val height = image.height
        if (image.colorModel is IndexColorModel) {
            return RgbImage.fromArgb(width, height, image.getRGB(0, 0, width, height, null, 0, width))
        }
        val raster = image.raster
        require(raster.sampleModel.sampleSize.all { it == 8 }) { "$file: only 8-bit samples are supported" }
        val bands = raster.numBands
        val samples = raster.getPixels(0, 0, width, height, null as IntArray?)
        val channelStep = if (bands >= 3) 1 else 0 // grey (and grey + alpha): one sample gives R, G and B
        return RgbImage(width, height, ByteArray(width * height * 3) { i -> samples[i / 3 * bands + i % 3 * channelStep].toByte() })
    }

    private fun writeAtomically(file: File, bytes: ByteArray) {
        val target = file.absoluteFile
        val temp = File(target.parentFile, ".${target.name}.tmp")
        temp.writeBytes(bytes)
        Files.move(temp.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE)
    }
}
