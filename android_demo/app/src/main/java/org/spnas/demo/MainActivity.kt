package org.spnas.demo

import android.content.Intent
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.enableEdgeToEdge
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.height
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.Scaffold
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableIntStateOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.saveable.rememberSaveable
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.text.font.FontFamily
import androidx.compose.ui.unit.dp
import androidx.lifecycle.compose.collectAsStateWithLifecycle
import androidx.lifecycle.viewmodel.compose.viewModel
import org.spnas.demo.core.LatencyStats
import java.util.Locale

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        enableEdgeToEdge()
        setContent { MaterialTheme { DemoApp() } }
    }
}

@Composable
fun DemoApp(viewModel: DemoViewModel = viewModel()) {
    var screen by rememberSaveable { mutableIntStateOf(0) }
    val settings by viewModel.settings.collectAsStateWithLifecycle()
    Scaffold { padding ->
        Column(
            Modifier.fillMaxSize().padding(padding).padding(16.dp).verticalScroll(rememberScrollState()),
            verticalArrangement = Arrangement.spacedBy(12.dp),
        ) {
            Choice(listOf("Classify", "Benchmark"), screen) { screen = it }
            Text(viewModel.modelSummary, style = MaterialTheme.typography.bodySmall)
            Row(horizontalArrangement = Arrangement.spacedBy(12.dp)) {
                Choice(Backend.entries.map { it.label.uppercase(Locale.ROOT) }, settings.backend.ordinal) { index ->
                    viewModel.settings.value = settings.copy(backend = Backend.entries[index])
                }
            }
            if (screen == 0) ClassifyScreen(viewModel, settings) else BenchmarkScreen(viewModel, settings)
        }
    }
}

@Composable
fun ClassifyScreen(viewModel: DemoViewModel, settings: Settings) {
    val state by viewModel.classify.collectAsStateWithLifecycle()
    val picker = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) viewModel.classifyUri(uri)
    }
    Text("Threads", style = MaterialTheme.typography.labelLarge)
    Choice(THREAD_CHOICES.map { it.toString() }, THREAD_CHOICES.indexOf(settings.threads)) { index ->
        viewModel.settings.value = settings.copy(threads = THREAD_CHOICES[index])
    }
    Text("Inference runs (median of N)", style = MaterialTheme.typography.labelLarge)
    Choice(RUN_CHOICES.map { it.toString() }, RUN_CHOICES.indexOf(settings.runs)) { index ->
        viewModel.settings.value = settings.copy(runs = RUN_CHOICES[index])
    }
    Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
        Button(onClick = viewModel::classifySample, enabled = !state.busy) { Text("Sample image") }
        Button(
            onClick = { picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly)) },
            enabled = !state.busy,
        ) { Text("From gallery") }
    }
    if (state.busy) LinearProgressIndicator(Modifier.fillMaxWidth())
    state.error?.let { Text(it, color = MaterialTheme.colorScheme.error) }
    state.crop?.let { crop ->
        Text("${state.source}: the 224 x 224 crop the model sees", style = MaterialTheme.typography.labelLarge)
        Image(crop.asImageBitmap(), contentDescription = "model input crop", modifier = Modifier.size(224.dp))
    }
    for (prediction in state.predictions) {
        Column {
            Row(Modifier.fillMaxWidth(), horizontalArrangement = Arrangement.SpaceBetween) {
                Text("${prediction.index}  ${prediction.label}")
                Text(String.format(Locale.ROOT, "%.1f %%", prediction.probability * 100))
            }
            LinearProgressIndicator(progress = { prediction.probability.toFloat() }, modifier = Modifier.fillMaxWidth())
        }
    }
    state.inference?.let { inference ->
        Spacer(Modifier.height(4.dp))
        Text("Inference: ${summary(inference)}")
        state.preprocess?.let { Text("Preprocessing (resize, crop, quantize): ${summary(it)}") }
        state.decodeMs?.let { Text(String.format(Locale.ROOT, "Decoding: %.1f ms (once)", it)) }
    }
}

@Composable
fun BenchmarkScreen(viewModel: DemoViewModel, settings: Settings) {
    val state by viewModel.benchmark.collectAsStateWithLifecycle()
    val context = LocalContext.current
    var threadSet by rememberSaveable { mutableIntStateOf(1) }
    var warmupIndex by rememberSaveable { mutableIntStateOf(1) }
    var runsIndex by rememberSaveable { mutableIntStateOf(1) }
    var showJson by rememberSaveable { mutableStateOf(false) }
    Text("Thread counts", style = MaterialTheme.typography.labelLarge)
    Choice(THREAD_SETS.map { it.joinToString(",") }, threadSet) { threadSet = it }
    Text("Warmup runs", style = MaterialTheme.typography.labelLarge)
    Choice(WARMUP_CHOICES.map { it.toString() }, warmupIndex) { warmupIndex = it }
    Text("Timed runs", style = MaterialTheme.typography.labelLarge)
    Choice(BENCH_RUN_CHOICES.map { it.toString() }, runsIndex) { runsIndex = it }
    Button(
        onClick = { viewModel.runBenchmark(THREAD_SETS[threadSet], WARMUP_CHOICES[warmupIndex], BENCH_RUN_CHOICES[runsIndex]) },
        enabled = !state.running,
    ) { Text("Run on ${settings.backend.label.uppercase(Locale.ROOT)}") }
    if (state.running) {
        LinearProgressIndicator(Modifier.fillMaxWidth())
        Text(state.progress)
    }
    state.error?.let { Text(it, color = MaterialTheme.colorScheme.error) }
    for (result in state.results) {
        Text("${result.accelerator} x${result.threads}: ${summary(result.inference)}")
    }
    state.results.firstOrNull()?.preprocessing?.let { Text("Preprocessing (not in the figures above): ${summary(it)}") }
    state.json?.let { json ->
        state.savedTo?.let { Text("Saved to $it (adb pull)", style = MaterialTheme.typography.bodySmall) }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Button(onClick = {
                val send = Intent(Intent.ACTION_SEND).apply {
                    type = "text/plain"
                    putExtra(Intent.EXTRA_SUBJECT, "spnas-bench results (Android app)")
                    putExtra(Intent.EXTRA_TEXT, json)
                }
                context.startActivity(Intent.createChooser(send, "Share benchmark JSON"))
            }) { Text("Share JSON") }
            OutlinedButton(onClick = { showJson = !showJson }) { Text(if (showJson) "Hide JSON" else "Show JSON") }
        }
        if (showJson) Text(json, fontFamily = FontFamily.Monospace, style = MaterialTheme.typography.bodySmall)
    }
}

/** A row of buttons, the selected one filled: a small segmented control without experimental APIs. */
@Composable
fun Choice(options: List<String>, selected: Int, onSelect: (Int) -> Unit) {
    Row(horizontalArrangement = Arrangement.spacedBy(6.dp)) {
        options.forEachIndexed { index, label ->
            if (index == selected) Button(onClick = { onSelect(index) }) { Text(label) }
            else OutlinedButton(onClick = { onSelect(index) }) { Text(label) }
        }
    }
}

fun summary(stats: LatencyStats): String = String.format(
    Locale.ROOT, "median %.2f ms, p90 %.2f ms, min %.2f ms (%d runs)", stats.medianMs, stats.p90Ms, stats.minMs, stats.runs,
)

val THREAD_CHOICES = listOf(1, 2, 4)
val RUN_CHOICES = listOf(5, 20, 50)
val THREAD_SETS = listOf(listOf(1), listOf(1, 2), listOf(1, 2, 4))
val WARMUP_CHOICES = listOf(5, 10, 20)
val BENCH_RUN_CHOICES = listOf(20, 50, 100)
