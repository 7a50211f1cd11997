"""MediaPipe Tasks' ImageClassifier (the real wheel, CPU) runs the ``--app mediapipe`` artifacts of the shared export.

The artifacts are the ones conftest's ``cli_exports`` writes (``--format all --int8 --app mediapipe``).
MediaPipe gets the resized image and the center crop as its region of interest, as an app would, so it
sees the same 224x224 pixels our runner does; its top-5 must be our runner's and its scores the softmax
of our runner's logits.  Tolerance 1e-6: the probabilities lie in [0, 1] and both sides compute them from
the same float32 logits (the int8 graph is bit-exact in XNNPACK), so only the float32 rounding of
``exp``/sum remains, a few ulps of 1 (about 1e-7); a wrong crop, channel order or normalisation moves the
top scores by 1e-3 or more.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("mediapipe.tasks.python.vision.image_classifier")

pytestmark = pytest.mark.parity

N_IMAGES = 6  # labels.csv rows 600.., the parity rows
SCORE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def entries(cli_exports) -> dict:
    report = json.loads((cli_exports / "report.json").read_text())
    return {entry["path"]: entry for entry in report["artifacts"] if entry["format"] == "tflite"}


def test_report_says_which_artifacts_mediapipe_takes(entries):
    for precision in ("fp32", "int8"):
        variant = entries[f"spnasnet_100_{precision}_mediapipe.tflite"]
        assert variant["app"] == "mediapipe" and variant["precision"] == precision
        assert variant["mediapipe"] is True and variant["passed"] is True, variant
        assert variant["details"]["input"]["dtype"] == "uint8"
        assert variant["details"]["output"] == {"name": "probabilities", "dtype": "float32",
                                                "shape": variant["details"]["output"]["shape"]}
    plain_int8, plain_fp32 = entries["spnasnet_100_int8.tflite"], entries["spnasnet_100_fp32.tflite"]
    assert plain_int8["app"] is None and plain_int8["mediapipe"] is False
    assert "got INT8" in plain_int8["mediapipe_reason"]  # MediaPipe's own message
    assert plain_fp32["mediapipe"] is False and "Per-channel" in plain_fp32["mediapipe_reason"]


def _classifier(path):
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.vision import image_classifier

    options = image_classifier.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                                      max_results=5)
    return image_classifier.ImageClassifier.create_from_options(options)


def test_plain_int8_is_refused_by_mediapipe(cli_exports):
    with pytest.raises(ValueError, match="uint8/float32, got INT8"):
        _classifier(cli_exports / "spnasnet_100_int8.tflite")


def test_arm64_refuses_the_softmax_variant_in_one_line(cli_exports, parity_pixels, reference_logits):
    from spnas.arm64.verify import verify_arm64
    from spnas.errors import SpnasError

    with pytest.raises(SpnasError, match="outputs softmax probabilities"):
        verify_arm64(cli_exports / "spnasnet_100_int8_mediapipe.tflite", parity_pixels, reference_logits)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_mediapipe_classifier_matches_our_runner(cli_exports, labels_csv, precision):
    import mediapipe
    from mediapipe.tasks.python.components.containers.rect import RectF
    from mediapipe.tasks.python.vision.core.image_processing_options import ImageProcessingOptions

    from spnas.classes import read_class_names
    from spnas.export import tflite
    from spnas.images import labelled_rows
    from spnas.intake import open_rgb
    from spnas.preprocess import DEFAULT_SPEC, center_crop_box, resize

    path = cli_exports / f"spnasnet_100_{precision}_mediapipe.tflite"
    runner = tflite.load(path)
    names = read_class_names()
    images = labelled_rows(labels_csv, 600, 600 + N_IMAGES)
    with _classifier(path) as classifier:
        for file, crop in zip(images.paths, images.pixels, strict=True):
            resized = resize(open_rgb(file, DEFAULT_SPEC), DEFAULT_SPEC)
            box = center_crop_box(resized.size, DEFAULT_SPEC)
            pixels = np.asarray(resized, np.uint8)
            np.testing.assert_array_equal(pixels[box[1]:box[3], box[0]:box[2]], crop)  # the ROI is the runners' crop
            logits = runner.run(crop[None])[0].astype(np.float64)
            expected = np.exp(logits - logits.max())
            expected /= expected.sum()
            width, height = resized.size
            roi = RectF(left=box[0] / width, top=box[1] / height, right=box[2] / width, bottom=box[3] / height)
            result = classifier.classify(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=pixels),
                                         ImageProcessingOptions(region_of_interest=roi))
            (head,) = result.classifications
            assert head.head_name == "probabilities"
            indices = [category.index for category in head.categories]
            scores = [category.score for category in head.categories]
            assert [category.category_name for category in head.categories] == [names[i] for i in indices]
            # Each class's score is the softmax of our logits, and they are our five highest.  Ties are
            # common in int8 (logits on a 0.1 grid) and MediaPipe breaks them its own way, so the
            # classes are compared as our top-5 up to the order of equal scores.
            np.testing.assert_allclose(scores, expected[indices], rtol=0, atol=SCORE_TOLERANCE, err_msg=str(file))
            np.testing.assert_allclose(scores, np.sort(expected)[::-1][:5], rtol=0, atol=SCORE_TOLERANCE)
            fifth = np.sort(expected)[-5]
            top = np.flatnonzero(expected > fifth)  # strictly above our 5th score: exactly these classes
            assert {i for i in indices if expected[i] > fifth} == set(top.tolist()), file
            assert all(expected[i] == fifth for i in indices if expected[i] <= fifth), file
