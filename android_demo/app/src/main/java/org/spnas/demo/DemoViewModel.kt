package org.spnas.demo

import android.app.Application
import android.graphics.Bitmap
import android.net.Uri
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.spnas.demo.core.BenchmarkResult
import org.spnas.demo.core.Classification
import org.spnas.demo.core.ImageOps
import org.spnas.demo.core.InputEncoder
import org.spnas.demo.core.LatencyStats
import org.spnas.demo.core.ModelInput
import org.spnas.demo.core.Prediction
import org.spnas.demo.core.RgbImage
import java.util.concurrent.Executors

data class Settings(val backend: Backend = Backend.CPU, val threads: Int = 2, val runs: Int = 20)

data class ClassifyState(
    val busy: Boolean = false,
    val source: String = "",
    val crop: Bitmap? = null,
    val predictions: List<Prediction> = emptyList(),
    val decodeMs: Double? = null,
    val preprocess: LatencyStats? = null,
    val inference: LatencyStats? = null,
    val error: String? = null,
)

data class BenchmarkState(
    val running: Boolean = false,
    val progress: String = "",
    val results: List<BenchmarkResult> = emptyList(),
    val json: String? = null,
    val savedTo: String? = null,
    val error: String? = null,
)

/**
 * Runs all model work on one background thread (a CompiledModel is not thread-safe) and exposes
 * the screens' state. Preprocessing and inference are timed separately: the median of N runs each.
 */
class DemoViewModel(application: Application) : AndroidViewModel(application) {
    private val executor = Executors.newSingleThreadExecutor()
    private val worker = executor.asCoroutineDispatcher()
    private val assetManager = application.assets
    private val assets: Result<SpnasAssets> = runCatching { SpnasAssets.load(assetManager) }
    private var classifier: LiteRtClassifier? = null

    val settings = MutableStateFlow(Settings())
    private val _classify = MutableStateFlow(ClassifyState())
    val classify: StateFlow<ClassifyState> = _classify.asStateFlow()
    private val _benchmark = MutableStateFlow(BenchmarkState())
    val benchmark: StateFlow<BenchmarkState> = _benchmark.asStateFlow()

    val modelSummary: String = assets.fold(
        onSuccess = { "${it.spec.sourceFile} (${it.spec.precision}, input ${it.spec.input.dtype.name.lowercase()})" },
        onFailure = { "assets not usable: ${it.message}" },
    )

    init {
        classifySample()
    }

    fun classifySample() = classify("bundled sample") { assetManager.open(SpnasAssets.SAMPLE).use(ImageDecoding::decode) }

    fun classifyUri(uri: Uri) = classify("gallery image") {
        val stream = getApplication<Application>().contentResolver.openInputStream(uri)
            ?: throw IllegalArgumentException("cannot open $uri")
        stream.use(ImageDecoding::decode)
    }

    private fun classify(source: String, decode: () -> RgbImage) {
        _classify.update { it.copy(busy = true, source = source, error = null) }
        viewModelScope.launch {
            val result = withContext(worker) {
                runCatching {
                    val bundle = assets.getOrThrow()
                    val current = settings.value
                    val decodeStart = System.nanoTime()
                    val image = decode()
                    val decodeMs = (System.nanoTime() - decodeStart) / 1e6
                    val encoder = InputEncoder(bundle.spec.preprocessing, bundle.spec.input, bundle.spec.inputMode)
                    lateinit var crop: RgbImage
                    lateinit var input: ModelInput
                    val preprocess = LatencyStats.measure(warmup = 1, runs = PREPROCESS_RUNS) {
                        crop = ImageOps.resizeAndCrop(image, bundle.spec.preprocessing)
                        input = encoder.encode(crop)
                    }
                    val model = classifierFor(bundle, current)
                    model.write(input)
                    val inference = LatencyStats.measure(warmup = WARMUP_RUNS, runs = current.runs) { model.run() }
                    val predictions = Classification.predictions(model.readLogits(), bundle.labels, 5)
                    ClassifyState(false, source, ImageDecoding.toBitmap(crop), predictions, decodeMs, preprocess, inference)
                }
            }
            _classify.value = result.getOrElse { ClassifyState(source = source, error = describe(it)) }
        }
    }

    fun runBenchmark(threadCounts: List<Int>, warmup: Int, runs: Int) {
        if (_benchmark.value.running) return
        _benchmark.value = BenchmarkState(running = true, progress = "preparing")
        viewModelScope.launch {
            val outcome = withContext(worker) {
                runCatching {
                    val bundle = assets.getOrThrow()
                    val backend = settings.value.backend
                    val results = AppBenchmark.measure(assetManager, bundle, backend, threadCounts, warmup, runs,
                        classifierFor = { threads -> classifierFor(bundle, Settings(backend, threads, runs)) },
                        progress = { message -> _benchmark.update { it.copy(progress = message) } })
                    val app = getApplication<Application>()
                    val (json, file) = AppBenchmark.save(results, app.getExternalFilesDir(null) ?: app.filesDir)
                    BenchmarkState(results = results, json = json, savedTo = file.absolutePath, progress = "done")
                }
            }
            _benchmark.value = outcome.getOrElse { BenchmarkState(error = describe(it)) }
        }
    }

    /** Reuses the compiled model while backend and threads stay the same; compiling takes a while. */
    private fun classifierFor(bundle: SpnasAssets, wanted: Settings): LiteRtClassifier {
        val current = classifier
        if (current != null && current.backend == wanted.backend && current.threads == wanted.threads) return current
        current?.close()
        classifier = null
        return LiteRtClassifier.create(assetManager, bundle.spec, wanted.backend, wanted.threads).also { classifier = it }
    }

    private fun describe(error: Throwable): String = "${error.javaClass.simpleName}: ${error.message}"

    /** viewModelScope is already cancelled here; the close is queued behind any work still running. */
    override fun onCleared() {
        executor.execute {
            classifier?.close()
            classifier = null
        }
        executor.shutdown()
    }

    companion object {
        const val WARMUP_RUNS = 3
        const val PREPROCESS_RUNS = 5
    }
}
