"""Assets of the Android demo: the model, class names, preprocessing JSON and a golden pair.

The app reads everything from these files, so nothing in ``android_demo`` is edited by hand
when the model changes.  The golden pair (a lossless sample image, its uint8 crop, the model
input tensor exactly as the host feeds it, and the host LiteRT logits) lets the app's
instrumented test prove the phone computes what the host computed, step by step.

Run ``python -m spnas.cli.android --tflite exports/spnasnet_100_int8.tflite
--out android_demo/app/src/main/assets`` or ``spnas-export ... --android-assets DIR``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spnas.classes import read_class_names
from spnas.errors import SpnasError
from spnas.images import EMBEDDED_DIR
from spnas.intake import UnusableImage, load_pixels, open_rgb
from spnas.io import atomic_path, atomic_write_bytes, atomic_write_text, ensure_out_dir
from spnas.preprocess import DEFAULT_SPEC, PreprocessSpec, normalize

SCHEMA_VERSION = 1
MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
PREPROCESSING_FILE = "preprocessing.json"
GOLDEN_FILE = "golden/golden.json"
SAMPLE_FILE = "golden/sample.png"
CROP_FILE = "golden/crop.rgb"
INPUT_FILE = "golden/input.bin"
ASSET_FILES = (MODEL_FILE, LABELS_FILE, PREPROCESSING_FILE, GOLDEN_FILE, SAMPLE_FILE, CROP_FILE, INPUT_FILE)

CLASS_NAMES_SOURCE = ("timm 1.0.31 wheel (PyPI): imagenet_synsets.txt + imagenet_synset_to_lemma.txt, first lemma; "
                      "see spnas/data/IMAGENET_CLASSES.md")
DEFAULT_SAMPLE = EMBEDDED_DIR / "chelsea.jpg"
SAMPLE_CREDIT = "scikit-image data.chelsea(), CC0, photographer Stefan van der Walt"
# The bundled photos are stored with a 256 px short side, which makes the app's resize a no-op;
# the sample is enlarged so the golden pair exercises the antialiased downscale gallery photos take.
SAMPLE_SHORT_SIDE = 384
INPUT_MODES = ("normalized", "pixels")
NUMPY_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}


def tensor_facts(detail: dict) -> dict:
    """An interpreter tensor description as JSON: name, shape, dtype, scale and zero point."""
    dtype = np.dtype(detail["dtype"]).name
    if dtype not in NUMPY_DTYPES:
        raise SpnasError(f"model tensor {detail['name']!r} has dtype {dtype}; the app handles "
                         f"{', '.join(NUMPY_DTYPES)}")
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]], "dtype": dtype,
            "scale": float(scale), "zero_point": int(zero_point)}


def app_input(crop: np.ndarray, spec: PreprocessSpec, facts: dict, mode: str) -> np.ndarray:
    """uint8 (H, W, 3) crop -> (1, H, W, 3) model input, with the app's exact arithmetic.

    ``mode`` says what the input tensor holds: "normalized" ((pixel / divisor - mean) / std, in
    float32 like numpy), quantized for integer inputs as ``clip(rint(value / scale) + zero_point)``
    with ties to even (what the Kotlin ``InputEncoder`` computes with ``Math.rint``); or "pixels",
    the raw RGB bytes of a uint8 input whose graph normalises by itself.
    """
    dtype = NUMPY_DTYPES[facts["dtype"]]
    if mode == "pixels":
        if dtype is not np.uint8:
            raise SpnasError(f"input mode 'pixels' needs a uint8 input tensor, not {facts['dtype']}")
        return crop[None].astype(np.uint8)
    values = normalize(crop[None], spec, "NHWC")
    if dtype is np.float32:
        return values.astype(np.float32)
    limits = np.iinfo(dtype)
    quantized = np.rint(values / np.float32(facts["scale"])) + facts["zero_point"]
    return np.clip(quantized, limits.min, limits.max).astype(dtype)


def detect_input_mode(prepared: np.ndarray, crop: np.ndarray, spec: PreprocessSpec, facts: dict) -> str:
    """Which app transform reproduces the host runner's input tensor (ties may differ by one step)."""
    prepared = np.asarray(prepared).reshape(1, *crop.shape)
    for mode in INPUT_MODES:
        if mode == "pixels" and facts["dtype"] != "uint8":
            continue
        candidate = app_input(crop, spec, facts, mode)
        if candidate.dtype != prepared.dtype:
            continue
        diff = np.abs(candidate.astype(np.float64) - prepared.astype(np.float64))
        exact_enough = diff.max() <= 1e-6 if facts["dtype"] == "float32" else diff.max() <= 1 and diff.mean() <= 1e-3
        if exact_enough:
            return mode
    raise SpnasError(f"the host runner feeds this model a {prepared.dtype} input that neither app transform "
                     f"({', '.join(INPUT_MODES)}) reproduces; the Android app cannot preprocess for it")


def run_interpreter(model_path: Path, prepared: np.ndarray) -> np.ndarray:
    """One LiteRT invocation on the host -> float32 logits (dequantized if the output is integer)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    (input_detail,), (output_detail,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(input_detail["index"], prepared)
    interpreter.invoke()
    output, facts = interpreter.get_tensor(output_detail["index"]).reshape(-1), tensor_facts(output_detail)
    if facts["dtype"] == "float32":
        return output.astype(np.float32)
    return (output.astype(np.float32) - np.float32(facts["zero_point"])) * np.float32(facts["scale"])


def model_facts(model_path: Path) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(model_path))
    except (ValueError, RuntimeError) as exc:
        raise SpnasError(f"{model_path}: not a loadable .tflite model ({exc})") from exc
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise SpnasError(f"{model_path}: the app expects one input and one output, found {len(inputs)} and "
                         f"{len(outputs)}")
    return tensor_facts(inputs[0]), tensor_facts(outputs[0])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    return shifted / shifted.sum()


def top_k(logits: np.ndarray, k: int = 5) -> list[int]:
    """Indices of the k largest logits; equal logits rank by lower index (the Kotlin ``topK`` rule)."""
    return [int(i) for i in np.argsort(-logits.astype(np.float64), kind="stable")[:k]]


def sample_image(source: Path, short_side: int):
    """The golden image: ``source`` decoded under the intake policy and scaled (bicubic) to ``short_side`` pixels."""
    from PIL import Image

    try:
        image = open_rgb(source)
    except UnusableImage as exc:
        raise SpnasError(f"sample image {exc}") from exc
    width, height = image.size
    factor = short_side / min(width, height)
    return image.resize((round(width * factor), round(height * factor)), Image.BICUBIC)


def preprocessing_entry(spec: PreprocessSpec) -> dict:
    """``preprocessing.json``'s ``preprocessing``: the spec plus the two rules the app implements it by."""
    return {**spec.to_dict(), "resize_algorithm": f"pillow-{spec.interpolation}-antialias",
            "crop_offset_rounding": "half-even"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sync_assets(tflite_path: str | Path, out_dir: str | Path, spec: PreprocessSpec = DEFAULT_SPEC, *,
                sample: str | Path = DEFAULT_SAMPLE, sample_short_side: int = SAMPLE_SHORT_SIDE,
                class_names: list[str] | None = None, progress: Callable[[str], object] | None = None) -> dict:
    """Write the app's assets into ``out_dir`` and return the preprocessing JSON written.

    ``class_names`` (index-ordered) default to ImageNet-1k's.

    The golden input is what the host runner (``spnas.export.load_runner``) feeds the model; the
    golden logits come from the LiteRT interpreter on that input.  Each file is written atomically.
    """
    from spnas.export import load_runner

    tflite_path, sample = Path(tflite_path), Path(sample)
    if tflite_path.suffix != ".tflite" or not tflite_path.is_file():
        raise SpnasError(f"{tflite_path}: not a .tflite file")
    if spec.interpolation not in ("bilinear", "bicubic") or spec.channel_order != "RGB":
        raise SpnasError(f"the Android app implements RGB bilinear and bicubic preprocessing, not "
                         f"{spec.channel_order} {spec.interpolation}")
    out_dir = ensure_out_dir(out_dir)
    say = progress or (lambda message: None)
    names = list(class_names) if class_names is not None else read_class_names()
    names_source = CLASS_NAMES_SOURCE if class_names is None else "the model's own class names (spnas-export)"
    input_facts, output_facts = model_facts(tflite_path)
    size = spec.input_size
    if input_facts["shape"] != [1, size, size, 3] or output_facts["shape"] != [1, len(names)]:
        raise SpnasError(f"{tflite_path}: the app expects input [1, {size}, {size}, 3] and output [1, {len(names)}], "
                         f"found {input_facts['shape']} and {output_facts['shape']}")

    image = sample_image(sample, sample_short_side)
    with atomic_path(out_dir / SAMPLE_FILE) as tmp:
        image.save(tmp, format="PNG")
    crop = load_pixels(out_dir / SAMPLE_FILE, spec)
    runner = load_runner(tflite_path)
    prepared = np.ascontiguousarray(runner.prepare(crop[None]))
    mode = detect_input_mode(prepared, crop, spec, input_facts)
    logits = run_interpreter(tflite_path, prepared.reshape(1, size, size, 3))
    say(f"golden pair: input mode {mode!r}, host top-1 class {top_k(logits, 1)[0]}")

    model_bytes = tflite_path.read_bytes()
    preprocessing = {
        "schema_version": SCHEMA_VERSION,
        "preprocessing": preprocessing_entry(spec),
        "model": {"file": MODEL_FILE, "source_file": tflite_path.name, "precision": runner.precision,
                  "sha256": sha256_bytes(model_bytes), "size_bytes": len(model_bytes)},
        "input": {**input_facts, "layout": "NHWC", "mode": mode},
        "output": {**output_facts, "kind": "logits"},
        "labels": {"file": LABELS_FILE, "count": len(names), "source": names_source},
    }
    order = top_k(logits, 6)
    probabilities = softmax(logits)
    logit_range = float(logits.max() - logits.min())
    golden = {
        "schema_version": SCHEMA_VERSION,
        "image": {"file": SAMPLE_FILE, "width": image.width, "height": image.height,
                  "source": f"{sample.name}, {SAMPLE_CREDIT if sample == DEFAULT_SAMPLE else 'user supplied'}; "
                            f"scaled to a {sample_short_side} px short side (bicubic), stored lossless"},
        "crop": {"file": CROP_FILE, "shape": list(crop.shape), "dtype": "uint8", "layout": "HWC RGB",
                 "sha256": sha256_bytes(crop.tobytes())},
        "input": {"file": INPUT_FILE, "shape": list(prepared.shape), "dtype": prepared.dtype.name,
                  "byte_order": "little-endian", "mode": mode, "sha256": sha256_bytes(prepared.tobytes())},
        "logits": [float(v) for v in logits],
        "top5": [{"index": i, "name": names[i], "logit": float(logits[i]), "probability": float(probabilities[i])}
                 for i in order[:5]],
        "top5_margin": float(min(logits[a] - logits[b] for a, b in zip(order, order[1:], strict=False))),
        # Two classes closer than this on the host may swap ranks on the phone's kernels.
        "top5_tie_tolerance": max(2 * output_facts["scale"], 0.002 * logit_range),
        # Any logit may move this much; a wrong preprocessing step moves them far more.
        "logit_tolerance": 0.05 * logit_range,
        "host": {"runtime": f"ai-edge-litert {litert_version()}", "machine": platform.machine(), "threads": 1},
    }
    atomic_write_bytes(out_dir / CROP_FILE, crop.tobytes())
    atomic_write_bytes(out_dir / INPUT_FILE, prepared.astype(prepared.dtype.newbyteorder("<")).tobytes())
    atomic_write_text(out_dir / GOLDEN_FILE, json.dumps(golden, indent=1) + "\n")
    atomic_write_text(out_dir / LABELS_FILE, "\n".join(names) + "\n")
    atomic_write_text(out_dir / PREPROCESSING_FILE, json.dumps(preprocessing, indent=1) + "\n")
    atomic_write_bytes(out_dir / MODEL_FILE, model_bytes)
    say(f"wrote {len(ASSET_FILES)} asset files into {out_dir}")
    return preprocessing


def artifact_spec_and_names(tflite_path: str | Path) -> tuple[PreprocessSpec, list[str] | None]:
    """The preprocessing and class names a ``.tflite`` of ours carries (its labels file; None: ImageNet's)."""
    from spnas.export import spec_from_metadata
    from spnas.export.tflite_metadata import LABELS_FILE as TFLITE_LABELS
    from spnas.export.tflite_metadata import associated_files
    from spnas.export.tflite_runtime import read_metadata

    path = Path(tflite_path)
    if path.suffix != ".tflite" or not path.is_file():
        raise SpnasError(f"{path}: not a .tflite file")
    model_facts(path)  # one line for a file LiteRT cannot load, before its metadata is parsed
    content = path.read_bytes()
    labels = associated_files(content).get(TFLITE_LABELS)
    return spec_from_metadata(read_metadata(content)), labels.decode().splitlines() if labels else None


def litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"
