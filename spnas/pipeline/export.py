"""The export: one checkpoint to every asked format, each artifact gated against the reference.

Run into a stage that replaces nothing in ``request.out`` unless the whole run succeeds, so a failed
or interrupted export leaves the output folder as it was.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from spnas.console import Console, silenced_stderr
from spnas.errors import SpnasError
from spnas.pipeline.requests import ExportRequest
from spnas.report import Report


class RandomWeightsRefused(SpnasError):
    """``strict``: the weights are random, so nothing was exported (the CLI exits 1)."""


def run_export(request: ExportRequest, source=None) -> Report:
    """Check the request, then export into a stage moved into ``request.out`` only if it all succeeds.

    ``source``: an already resolved ``spnas.source.ModelSource`` (``spnas.Model`` passes its own); by default
    ``request.weights`` with its labels and preprocessing overrides.  Returns the ``Report`` written as
    report.json; a failed gate is ``report.passed == False``, not an exception.
    """
    from spnas.export import format_module, installed_formats
    from spnas.intake import set_pixel_limit
    from spnas.io import check_out_dir
    from spnas.quantize import load_plan
    from spnas.staging import staged_output
    from spnas.validation import load_valset

    console = Console(request.quiet)
    with silenced_stderr(request.quiet):
        set_pixel_limit(request.max_image_pixels)
        if request.format == "all":
            modules, skipped = installed_formats()
        else:
            modules, skipped = {request.format: format_module(request.format)}, {}  # fail early on a missing extra
        out_dir = check_out_dir(request.out)
        plan = load_plan(request.plan) if request.plan else None  # a bad plan fails before weights or images load
        if source is None:
            with console.step(f"loading weights ({request.weights})"):
                source = load_source(request.weights, request.labels, request.preprocessing_overrides())
        valset = load_valset(request.val, source.class_names) if request.val else None
        with staged_output(out_dir) as stage:
            return export_into(stage, request, modules, skipped, source, valset, plan, console)


def load_source(weights: str, labels: str | None = None, overrides: dict | None = None):
    """The ``spnas.source.ModelSource`` of ``weights``, the warnings raised while resolving it kept in its
    ``warnings`` (they go to the report, not to the terminal)."""
    from spnas.source import resolve_source

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = resolve_source(weights, labels=labels, overrides=overrides)
    source.warnings[:0] = [str(w.message) for w in caught]
    return source


def export_into(stage: Path, request: ExportRequest, modules: dict, skipped: dict, source, valset, plan,
                console: Console) -> Report:
    """The export itself: every file goes into ``stage``; returns its ``Report``."""
    from spnas.accelerators import ACCELERATED_FORMATS
    from spnas.accelerators import check as check_accelerators
    from spnas.create import create_model
    from spnas.export import ExportContext
    from spnas.gates import gate_logits, gate_lowering, int8_agreement, lowers_plan, simulate_plan, thresholds_for
    from spnas.images import split_images
    from spnas.io import artifact_sha256, artifact_size
    from spnas.reference import TorchRunner
    from spnas.report import build_report, write_report

    spec, gates = source.spec, request.gates
    with warnings.catch_warnings(record=True) as more:
        warnings.simplefilter("always")
        with console.step("loading calibration and parity images"):
            calib, parity = split_images(request.calib, request.num_calib, request.num_parity, request.seed, spec)
        if request.calib is None and not (request.int8 and plan is not None):
            warnings.warn("calibrating on the small embedded image set; 200+ images from your deployment "
                          "domain (--calib DIR) calibrate int8 better", stacklevel=1)
        console.info(f"{len(calib)} calibration images, {len(parity)} held-out parity images from {calib.root}")
        model = create_model(source.checkpoint, calib_pixels=calib.pixels, spec=spec)
    weights = model.weights_info
    if valset is not None:
        from spnas.validation import check_disjoint

        with console.step(f"checking {len(valset)} validation images against calibration (sha256)"):
            check_disjoint(valset, calib.manifest())
    messages = ([f"--format all: skipped {reason}" for reason in skipped.values()] + source.warnings
                + [str(w.message) for w in more])
    if weights.warning and weights.warning not in messages:
        messages.append(weights.warning)
    for message in messages:
        console.warn(message)
    if weights.is_random and request.strict:
        raise RandomWeightsRefused("--strict: refusing random weights")
    reference = TorchRunner(model, spec).run(parity.pixels)
    entries, int8_logits = [], {}
    fallback_block, int8_plan, simulated = None, None, None
    if request.fallback == "auto" and plan is None and not weights.is_random:
        plan, fallback_block = plan_fallback(model, spec, calib.pixels, parity.pixels, request, console)
    for name, module in modules.items():
        ctx = ExportContext(model=model, weights=weights, preprocessing=spec, calibration_pixels=calib.pixels,
                            out_dir=stage, int8=request.int8, options=request.formats, progress=console.info,
                            quant_plan=plan, class_names=source.class_names)
        with console.step(f"exporting {name}"):
            artifacts = module.export(ctx)
        plan = ctx.quant_plan  # computed by the first format that lowers it, then shared by the others
        for artifact in artifacts:
            lowering = lowers_plan({"precision": artifact.precision, **artifact.entry, "details": artifact.details})
            if lowering and int8_plan is None:
                with console.step(f"simulating the int8 plan on {len(parity)} held-out images"):
                    int8_plan, simulated = simulate_plan(model, plan, parity.pixels, spec, gates)
            with console.step(f"parity of {artifact.path.name} on {len(parity)} held-out images"):
                logits = module.load(artifact.path).run(parity.pixels)
                result = (gate_lowering(logits, reference, int8_plan["simulation"], simulated, gates,
                                        weights.is_random) if lowering
                          else gate_logits(logits, reference, artifact.precision, random_weights=weights.is_random,
                                           thresholds=thresholds_for(artifact.precision, gates)))
            entry = {"format": artifact.format, "precision": artifact.precision,
                     "path": str(Path(artifact.path).relative_to(stage)),
                     "size_bytes": artifact_size(artifact.path), "sha256": artifact_sha256(artifact.path),
                     **artifact.entry, **result, "details": artifact.details}
            if artifact.format in ACCELERATED_FORMATS and "accelerators" not in entry:
                with console.step(f"accelerator checks of {artifact.path.name}"):
                    entry["accelerators"] = check_accelerators(artifact.path, artifact.format)
            if lowering:
                int8_logits[entry["path"]] = logits
                if fallback_block:
                    entry["fallback"] = fallback_block
            entries.append(entry)
    agreement = int8_agreement(int8_logits, reference, gates)
    validation = None
    if valset is not None:
        from spnas.validation import validate_entries

        validation = validate_entries(valset, spec, TorchRunner(model, spec), entries, stage, console,
                                      max_accuracy_drop=request.max_accuracy_drop, workers=request.val_workers)
    report = Report.from_dict(build_report(weights=weights, preprocessing=spec, calibration=calib,
                                           parity_images=parity, artifacts=entries, warnings=messages,
                                           classes=source.classes_report(), overrides=source.overrides,
                                           validation=validation, int8_agreement=agreement, int8_plan=int8_plan),
                              exit_code=0 if all(entry["passed"] is not False for entry in entries)
                              and (agreement is None or agreement["passed"]) else 1)
    write_report(report, stage / "report.json")
    if request.android_assets:
        sync_android_assets(stage, entries, request.android_assets, spec, source.class_names, console)
    return report


def plan_fallback(model, spec, calib_pixels, parity_pixels, request: ExportRequest, console: Console):
    """``fallback="auto"``: the plan whose simulation passes the plan's gate (``spnas.quantize.fallback``), which
    every format then lowers, and the fallback block of each int8 entry (None: the first plan passed)."""
    from spnas.folding import fold_batchnorm
    from spnas.gates import plan_judge
    from spnas.preprocess import normalize
    from spnas.quantize import PixelBatches, build_plan
    from spnas.quantize.fallback import fallback

    folded, reader = fold_batchnorm(model), PixelBatches(calib_pixels, spec)
    with console.step(f"int8 plan on {len(calib_pixels)} images"):
        plan = build_plan(folded, reader, spec, weights_sha256=model.weights_info.sha256)
    with console.step("fallback: simulating the plan against the int8 gate"):
        return fallback(folded, plan, reader, spec, normalize(parity_pixels, spec), plan_judge(request.gates),
                        request.fallback_layers, console.info)


def sync_android_assets(stage: Path, entries: list[dict], assets_dir: str, spec, class_names, console) -> None:
    """Write the app's assets all or nothing too: staged in ``assets_dir``, moved in when complete."""
    from spnas.android import sync_assets
    from spnas.io import check_out_dir
    from spnas.staging import staged_output

    tflite = [e for e in entries if e["format"] == "tflite"]
    chosen = next((e for e in tflite if e["precision"] == "int8"), tflite[0])
    with console.step(f"syncing Android assets into {assets_dir}"), staged_output(check_out_dir(assets_dir)) as assets:
        sync_assets(stage / chosen["path"], assets, spec, class_names=class_names)
