"""spnas.mil_eval against numpy/torch on one-op ML programs built with coremltools' MIL Builder.

Each program is saved as a real ``.mlpackage`` (weights in ``weights/weight.bin``) and read
back, so the tests cover the protobuf and blob parsing as well as each op's arithmetic.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from spnas.errors import SpnasError

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def ct():
    from spnas.mil_eval import import_coremltools

    return import_coremltools()


@pytest.fixture(scope="module")
def build(ct, tmp_path_factory):
    """Save a one-function MIL program built by ``body(mb, *inputs)`` and open it with the evaluator."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from spnas.mil_eval import MilProgram

    dtypes = {np.float32: types.fp32, np.float16: types.fp16}
    counter = iter(range(1000))

    def _build(body, *input_shapes, dtype=np.float32):
        specs = [mb.TensorSpec(shape=shape, dtype=dtypes[dtype]) for shape in input_shapes]

        # The Builder reads the function's named parameters, so one wrapper per input count.
        if len(specs) == 1:
            def function(x):
                return body(mb, x)
        else:
            def function(x, y):
                return body(mb, x, y)
        program = mb.program(input_specs=specs, opset_version=ct.target.iOS17)(function)

        mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                             compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY)
        path = tmp_path_factory.mktemp("mil") / f"op{next(counter)}.mlpackage"
        mlmodel.save(str(path))
        return MilProgram(path)

    return _build


def run(program, *arrays):
    outputs = program.run(dict(zip(program.inputs, arrays, strict=True)))
    (output,) = outputs.values()
    return output


def as_float(mb, quantized):
    """Integer tensors cannot be program outputs: expose the raw integers through dequantize(scale=1)."""
    return mb.dequantize(input=quantized, scale=np.float32(1.0))


def torch_conv(x, weight, bias, stride, padding, groups):
    import torch

    x, weight, bias = (torch.from_numpy(a.astype(np.float32)) for a in (x, weight, bias))
    return torch.nn.functional.conv2d(x, weight, bias, stride, padding, groups=groups).numpy()


def test_conv_groups1_strided_padded_fp32(build):
    weight = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bias = RNG.standard_normal(8).astype(np.float32)
    x = RNG.standard_normal((1, 3, 11, 11)).astype(np.float32)
    program = build(lambda mb, x: mb.conv(x=x, weight=weight, bias=bias, strides=[2, 2], pad_type="custom",
                                          pad=[1, 1, 1, 1]), x.shape)
    assert program.op_counts["conv"] == 1
    np.testing.assert_allclose(run(program, x), torch_conv(x, weight, bias, 2, 1, 1), rtol=1e-5, atol=1e-5)


def test_conv_depthwise_fp16_rounds_once_per_op(build):
    """fp16 semantics: float32 accumulation, one rounding of the output to float16."""
    weight = RNG.standard_normal((16, 1, 5, 5)).astype(np.float16)
    bias = RNG.standard_normal(16).astype(np.float16)
    x = RNG.standard_normal((1, 16, 9, 9)).astype(np.float16)
    program = build(lambda mb, x: mb.conv(x=x, weight=weight, bias=bias, pad_type="custom", pad=[2, 2, 2, 2],
                                          groups=16), x.shape, dtype=np.float16)
    out = run(program, x)
    assert out.dtype == np.float16
    expected = torch_conv(x, weight, bias, 1, 2, 16).astype(np.float16)
    ulp = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(out.astype(np.float32) - expected.astype(np.float32)) <= ulp)


def test_conv_pointwise_valid(build):
    weight = RNG.standard_normal((6, 4, 1, 1)).astype(np.float32)
    x = RNG.standard_normal((1, 4, 5, 7)).astype(np.float32)
    program = build(lambda mb, x: mb.conv(x=x, weight=weight, pad_type="valid"), x.shape)
    np.testing.assert_allclose(run(program, x), np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x), rtol=1e-5,
                               atol=1e-5)


def test_float16_rounding_in_float32_is_numpys_cast_bit_for_bit():
    """Intermediate fp16 tensors are held as float32 and rounded by bit arithmetic: every float32 pattern class
    (normal, ties, subnormal, overflow, zeros, inf, nan) rounds exactly as ``astype(float16)``."""
    from spnas.mil_eval import _round_to_float16

    special = np.array([0.0, -0.0, 1 + 2**-11, 1 + 3 * 2**-11, 65504, 65519.996, 65520, -70000, 2**-14,
                        2**-14 * (1 - 2**-12), 2**-25, 2**-24 * 1.5, np.inf, -np.inf, np.nan], np.float32)
    bits = RNG.integers(-2**31, 2**31, 200_000).astype(np.int32).view(np.float32)  # every exponent
    for x in (special, bits, RNG.standard_normal((4, 3, 5)).astype(np.float32)):
        with np.errstate(over="ignore"):
            expected = x.astype(np.float16).astype(np.float32)
            got = _round_to_float16(x.copy())
        np.testing.assert_array_equal(got.view(np.int32), expected.view(np.int32))


def test_float16_rounding_of_every_tie_and_its_neighbours_is_numpys_cast():
    """Every float32 halfway between two float16 normals (both signs), and the float32 values either side of it:
    where rounding to nearest-even decides, the float32 split must agree with numpy's cast."""
    from spnas.mil_eval import _round_to_float16

    exponent, mantissa = np.meshgrid(np.arange(113, 143), np.arange(1024), indexing="ij")
    ties = (exponent << 23 | mantissa << 13 | 0x1000).astype(np.int32).reshape(-1)
    bits = np.concatenate([ties - 1, ties, ties + 1])
    bits = np.concatenate([bits, bits | np.int32(-2**31)])
    x = bits.view(np.float32)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(_round_to_float16(x.copy()).view(np.int32), expected.view(np.int32))


def test_batch_of_images_in_one_pass_equals_each_alone(build):
    """A batch-1 program run on N images at once (conv, quantize, dequantize, reshape, linear) gives each image
    its batch-1 result bit for bit; a reduction over the batch axis is not run on a batch."""
    weight = RNG.standard_normal((4, 3, 3, 3)).astype(np.float16)
    head = RNG.standard_normal((5, 4 * 4 * 4)).astype(np.float16)

    def body(mb, x):
        y = mb.relu(x=mb.conv(x=x, weight=weight, strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1]))
        q = mb.quantize(input=y, scale=np.float16(0.05), zero_point=np.int8(3), output_dtype="int8")
        y = mb.dequantize(input=q, scale=np.float16(0.05), zero_point=np.int8(3))
        return mb.linear(x=mb.reshape(x=y, shape=[1, 64]), weight=head)

    program = build(body, (1, 3, 8, 8), dtype=np.float16)
    assert program.per_image
    x = RNG.standard_normal((6, 3, 8, 8)).astype(np.float16)
    together = run(program, x)
    assert together.dtype == np.float16 and together.shape == (6, 5)
    np.testing.assert_array_equal(together, np.concatenate([run(program, x[i:i + 1]) for i in range(6)]))
    across = build(lambda mb, x: mb.reduce_mean(x=x, axes=[0, 1]), (1, 4))
    assert not across.per_image
    with pytest.raises(SpnasError, match="has shape"):
        run(across, np.ones((2, 4), np.float32))


def test_passes_side_by_side_run_with_one_blas_thread_and_give_it_back(build, monkeypatch):
    """OpenBLAS's results depend on its thread count, so every pass must see one BLAS thread; threadpoolctl ignores a
    limit from any thread but the one that holds it, so run_passes takes it in the caller, and gives it back whole:
    afterwards a worker thread can take its own limit again."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info, threadpool_limits

    from spnas import mil_eval

    def blas_threads():
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen = []

    def spying_relu(x):
        seen.append(blas_threads())
        return mil_eval.op_relu(x)

    program = build(lambda mb, x: mb.relu(x=x), (1, 4))
    monkeypatch.setitem(mil_eval.KERNELS, "relu", spying_relu)
    before = blas_threads()
    passes = [RNG.standard_normal((2, 4)).astype(np.float32) for _ in range(4)]
    (input_name,), (output_name,) = program.inputs, program.outputs
    outputs = program.run_passes(input_name, passes, output_name)
    np.testing.assert_array_equal(np.concatenate(outputs), np.maximum(np.concatenate(passes), 0))
    assert len(seen) >= len(passes) and all(threads == {1} for threads in seen) and blas_threads() == before

    def limited_in_a_worker():
        with threadpool_limits(limits=1, user_api="blas"):
            return blas_threads()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(limited_in_a_worker).result() == {1}


def test_relu_fp16(build):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float16)
    program = build(lambda mb, x: mb.relu(x=x), x.shape, dtype=np.float16)
    np.testing.assert_array_equal(run(program, x), np.maximum(x, np.float16(0)))


def test_add_broadcasts_and_rounds_to_fp16(build):
    x = RNG.standard_normal((1, 4, 3, 3)).astype(np.float16)
    y = RNG.standard_normal((1, 4, 1, 1)).astype(np.float16)
    program = build(lambda mb, x, y: mb.add(x=x, y=y), x.shape, y.shape, dtype=np.float16)
    np.testing.assert_array_equal(run(program, x, y), (x.astype(np.float32) + y.astype(np.float32)).astype(np.float16))


def test_sub_broadcasts(build):
    x = RNG.standard_normal((1, 3, 2, 2)).astype(np.float32)
    y = RNG.standard_normal((1, 3, 1, 1)).astype(np.float32)
    program = build(lambda mb, x, y: mb.sub(x=x, y=y), x.shape, y.shape)
    np.testing.assert_array_equal(run(program, x, y), x - y)


def test_mul_rounds_to_fp16(build):
    x = RNG.standard_normal((1, 3, 2, 2)).astype(np.float16)
    y = RNG.standard_normal((1, 3, 2, 2)).astype(np.float16)
    program = build(lambda mb, x, y: mb.mul(x=x, y=y), x.shape, y.shape, dtype=np.float16)
    np.testing.assert_array_equal(run(program, x, y), (x.astype(np.float32) * y.astype(np.float32)).astype(np.float16))


def test_reduce_mean_keep_dims(build):
    x = RNG.standard_normal((1, 5, 7, 7)).astype(np.float32)
    program = build(lambda mb, x: mb.reduce_mean(x=x, axes=[-2, -1], keep_dims=True), x.shape)
    np.testing.assert_allclose(run(program, x), x.mean(axis=(2, 3), keepdims=True), rtol=1e-6, atol=1e-7)


def test_reshape(build):
    x = RNG.standard_normal((1, 6, 1, 1)).astype(np.float32)
    program = build(lambda mb, x: mb.reshape(x=x, shape=[1, 6]), x.shape)
    np.testing.assert_array_equal(run(program, x), x.reshape(1, 6))


def test_linear(build):
    weight = RNG.standard_normal((10, 6)).astype(np.float32)
    bias = RNG.standard_normal(10).astype(np.float32)
    x = RNG.standard_normal((1, 6)).astype(np.float32)
    program = build(lambda mb, x: mb.linear(x=x, weight=weight, bias=bias), x.shape)
    np.testing.assert_allclose(run(program, x), x @ weight.T + bias, rtol=1e-5, atol=1e-6)


def test_cast_to_fp16_rounds_to_nearest_even(build):
    # 1 + 2**-11 is halfway between two float16 values: ties go to the even one (1.0).
    x = np.array([[1 + 2**-11, 1 + 3 * 2**-11, 65519.0, -0.1]], dtype=np.float32)
    program = build(lambda mb, x: mb.cast(x=x, dtype="fp16"), x.shape)
    out = run(program, x)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, np.array([[1.0, 1 + 2**-9, 65504.0, -0.1]], dtype=np.float16))


def test_quantize_per_channel_int8_ties_to_even_and_clips(build):
    scale = np.array([0.5, 0.25], dtype=np.float32)
    zero_point = np.array([3, -2], dtype=np.int8)
    x = np.array([[[1.25, -100.0, 100.0], [0.125, 0.375, -0.3]]], dtype=np.float32)  # (1, 2, 3), axis 1
    program = build(lambda mb, x: as_float(mb, mb.quantize(input=x, scale=scale, zero_point=zero_point, axis=1,
                                                           output_dtype="int8")), x.shape)
    assert program.op_counts["quantize"] == 1
    # 1.25 / 0.5 = 2.5 -> 2 (ties to even) + 3; 0.125 / 0.25 = 0.5 -> 0; 0.375 / 0.25 = 1.5 -> 2
    np.testing.assert_array_equal(run(program, x), np.array([[[5, -128, 127], [-2, 0, -3]]], dtype=np.float32))


def test_quantize_uint8_per_tensor(build):
    x = np.array([[0.0, 0.3, 1.0, 9.0]], dtype=np.float32)
    program = build(lambda mb, x: as_float(mb, mb.quantize(input=x, scale=np.float32(0.02), output_dtype="uint8")),
                    x.shape)
    np.testing.assert_array_equal(run(program, x), np.array([[0, 15, 50, 255]], dtype=np.float32))


def test_dequantize_per_channel(build):
    scale = np.array([0.5, 0.125, 2.0], dtype=np.float32)
    zero_point = np.array([1, -3, 0], dtype=np.int8)

    def body(mb, x):
        q = mb.quantize(input=x, scale=np.float32(1.0), output_dtype="int8")
        return mb.dequantize(input=q, scale=scale, zero_point=zero_point, axis=1)

    x = RNG.integers(-50, 50, (1, 3, 4)).astype(np.float32)
    program = build(body, x.shape)
    assert program.op_counts["dequantize"] == 1 and program.op_counts["quantize"] == 1
    expected = (x - zero_point.reshape(1, 3, 1)) * scale.reshape(1, 3, 1)
    np.testing.assert_allclose(run(program, x), expected)


def test_constexpr_affine_dequantize_weight(build):
    quantized = RNG.integers(-128, 128, (4, 32)).astype(np.int8)
    scale = RNG.uniform(0.01, 0.1, 4).astype(np.float32)
    zero_point = np.array([0, 1, -1, 5], dtype=np.int8)

    def body(mb, x):
        weight = mb.constexpr_affine_dequantize(quantized_data=quantized, zero_point=zero_point, scale=scale, axis=0)
        return mb.linear(x=x, weight=weight)

    x = RNG.standard_normal((1, 32)).astype(np.float32)
    program = build(body, x.shape)
    assert program.op_counts["constexpr_affine_dequantize"] == 1
    weight = (quantized.astype(np.float32) - zero_point[:, None]) * scale[:, None]
    np.testing.assert_allclose(run(program, x), x @ weight.T, rtol=1e-5, atol=1e-5)


def test_unknown_op_fails_loudly_by_name(build):
    with pytest.raises(SpnasError, match="sigmoid"):
        build(lambda mb, x: mb.sigmoid(x=x), (1, 4))


def test_unsupported_option_fails_loudly(build):
    weight = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
    program = build(lambda mb, x: mb.conv(x=x, weight=weight, pad_type="same"), (1, 2, 5, 5))
    with pytest.raises(SpnasError, match="pad_type 'same'"):
        program.run({"x": np.zeros((1, 2, 5, 5), np.float32)})


def test_corrupt_blob_header_is_an_error(build):
    from spnas.mil_eval import MilProgram

    weight = RNG.standard_normal((16, 32)).astype(np.float32)
    program = build(lambda mb, x: mb.linear(x=x, weight=weight), (1, 32))
    blob = program.package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(blob.read_bytes())
    assert struct.unpack_from("<I", data, 64)[0] == 0xDEADBEEF  # first blob header after the file header
    struct.pack_into("<I", data, 64, 0)
    blob.write_bytes(bytes(data))
    with pytest.raises(SpnasError, match="corrupt blob header"):
        MilProgram(program.package)
