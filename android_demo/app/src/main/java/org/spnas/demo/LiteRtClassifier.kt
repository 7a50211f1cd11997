package org.spnas.demo

import android.content.res.AssetManager
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import org.spnas.demo.core.Classification
import org.spnas.demo.core.DType
import org.spnas.demo.core.ModelInput
import org.spnas.demo.core.ModelSpec

enum class Backend(val label: String) { CPU("cpu"), GPU("gpu") }

/**
 * The exported model in LiteRT's CompiledModel API (LiteRT 2.3.0), the API the LiteRT Android docs
 * describe as current. CPU runs XNNPACK with the chosen thread count; GPU needs `litert-gpu`.
 *
 * Writing the input, running, and reading the output are separate calls so the benchmark times
 * [run] alone. Not thread-safe: use one instance from one thread.
 */
class LiteRtClassifier private constructor(
    private val model: CompiledModel,
    private val spec: ModelSpec,
    val backend: Backend,
    val threads: Int,
) : AutoCloseable {
    private val inputs: List<TensorBuffer> = model.createInputBuffers()
    private val outputs: List<TensorBuffer> = model.createOutputBuffers()

    fun write(input: ModelInput) {
        when (input) {
            is ModelInput.Floats -> inputs[0].writeFloat(input.values)
            // int8 and uint8 inputs are both written as bytes; the tensor's type gives them meaning.
            is ModelInput.Bytes -> inputs[0].writeInt8(input.values)
        }
    }

    fun run() = model.run(inputs, outputs)

    /** Float logits: integer outputs are dequantized with the scale and zero point from the JSON. */
    fun readLogits(): FloatArray = when (spec.output.dtype) {
        DType.FLOAT32 -> outputs[0].readFloat()
        DType.INT8, DType.UINT8 -> Classification.dequantize(outputs[0].readInt8(), spec.output)
    }

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }

    companion object {
        fun create(assets: AssetManager, spec: ModelSpec, backend: Backend, threads: Int): LiteRtClassifier {
            val options = when (backend) {
                Backend.CPU -> CompiledModel.Options(Accelerator.CPU).apply {
                    cpuOptions = CompiledModel.CpuOptions(numThreads = threads)
                }
                Backend.GPU -> CompiledModel.Options(Accelerator.GPU)
            }
            val model = CompiledModel.create(assets, spec.modelFile, options)
            return LiteRtClassifier(model, spec, backend, threads)
        }
    }
}
