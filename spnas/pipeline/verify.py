"""The verification: artifacts, wherever they came from, gated against the reference on held-out images,
here, on emulated CPU tiers and on hosted phones.

Without ``request.images`` the parity images are the ones listed in the ``report.json`` beside the
first artifact, so the figures equal the ones the export reported.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from spnas.console import Console, silenced_stderr
from spnas.errors import SpnasError
from spnas.pipeline.export import RandomWeightsRefused
from spnas.pipeline.requests import VerifyRequest
from spnas.report import Report
from spnas.version import __version__


def load_report_beside(artifact):
    """The export's report beside the artifact (its preprocessing, parity images and weights), if there is one."""
    from spnas.report import read_report

    path = artifact.parent / "report.json"
    return read_report(path) if path.is_file() else None


def parity_images(request: VerifyRequest, report, spec):
    """The images to verify on: --images split like spnas-export, else the report's parity set."""
    from spnas.images import load_images, split_images

    if request.images:
        return split_images(request.images, request.num_calib, request.num_parity, request.seed, spec)[1]
    if not report:
        raise SpnasError("no --images given and no report.json beside the artifact to take parity images from")
    root = Path(report["parity_images"]["source"])
    paths = [root / entry["file"] for entry in report["parity_images"]["manifest"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SpnasError(f"parity image {missing[0]} from report.json is gone; pass --images DIR")
    return load_images(paths, root, spec)


def reference_checkpoint(request: VerifyRequest, report):
    from spnas.weights import resolve_checkpoint

    weights = request.weights or (report and report["weights"]["source"])
    if not weights:
        raise SpnasError("no --weights given and no report.json beside the artifact naming them")
    return resolve_checkpoint(weights)


def reference_spec(checkpoint, report, runners: dict):
    """The reference's preprocessing: mean, std, interpolation and crop from the export's report.json (else the
    checkpoint's config); only the crop size from the artifacts, so a wrongly normalised artifact still fails."""
    import dataclasses

    from spnas.preprocess import PreprocessSpec, spec_from_config

    spec = (PreprocessSpec.from_dict(report["preprocessing"]) if report
            else spec_from_config(checkpoint.pretrained_cfg)[0])
    sizes = {}
    for artifact, runner in runners.items():
        sizes.setdefault(runner.spec.input_size, artifact)
    if len(sizes) > 1:
        raise SpnasError("artifacts of different input sizes (" + ", ".join(f"{a.name}: {s}" for s, a in sizes.items())
                         + "); verify them separately")
    return dataclasses.replace(spec, input_size=next(iter(sizes)))


def reference_model(checkpoint, report, spec):
    from spnas.create import create_model
    from spnas.images import load_images

    bn_pixels = None
    if checkpoint.state is None and report:  # rebuild the same random model: BN re-estimated on the same images
        root = Path(report["calibration"]["source"])
        bn_pixels = load_images([root / e["file"] for e in report["calibration"]["manifest"]], root, spec).pixels
    return create_model(checkpoint, calib_pixels=bn_pixels, spec=spec)


def check_job_failures(entries: list[dict]) -> None:
    """AI Hub jobs that failed are reported as failed, then the run ends as an input/service error (exit 2)."""
    job_failures = [f"[{d['device']['name']}] {Path(e['path']).name}: {d['failure']}"
                    for e in entries for d in e.get("ai_hub", []) if "failure" in d]
    if job_failures:
        raise SpnasError(f"{len(job_failures)} AI Hub job(s) failed (reported as failed): " + "; ".join(job_failures))


def run_verify(request: VerifyRequest, raise_job_failures: bool = True) -> Report:
    """Gate the artifacts; returns the ``Report`` (``kind="verify"``) also written to ``request.json``.

    AI Hub jobs that failed are in the report as failed; then, with ``raise_job_failures``, a ``SpnasError``
    names them (the CLI prints its tables first, then exits 2).
    """
    with silenced_stderr(request.quiet):
        report = gate_artifacts(request, Console(request.quiet))
    if raise_job_failures:
        check_job_failures([artifact.to_dict() for artifact in report.artifacts])
    return report


def gate_artifacts(request: VerifyRequest, console: Console) -> Report:
    """``run_verify``'s work: every artifact opened first (a bad one fails at once), then gated."""
    from spnas.accelerators import ACCELERATED_FORMATS
    from spnas.artifact_intake import probe, require_spnas_metadata, unprobed
    from spnas.export import format_of, load_runner
    from spnas.gates import gate_logits, gate_lowering, int8_agreement, lowers_plan, simulate_plan, thresholds_for
    from spnas.intake import set_pixel_limit
    from spnas.io import artifact_size, atomic_write_text
    from spnas.parity import Thresholds
    from spnas.quantize import PLAN_FILE
    from spnas.reference import TorchRunner
    from spnas.tables import summary_markdown

    gates = request.gates
    set_pixel_limit(request.max_image_pixels)
    artifacts = [Path(a) for a in request.artifacts]
    for artifact in artifacts:
        if not artifact.exists():
            raise SpnasError(f"{artifact}: no such artifact")
        format_of(artifact)
    if request.arm64 and not all(format_of(a) == "tflite" for a in artifacts):
        raise SpnasError("--arm64 runs .tflite artifacts only")
    from spnas.arm64.tiers import parse_tiers

    tiers = parse_tiers(request.cpu) if request.cpu else []
    if tiers and not all(format_of(a) in ("tflite", "onnx", "executorch") for a in artifacts):
        raise SpnasError("--cpu runs .tflite, .onnx and .pte artifacts")
    if request.node_data and (len(artifacts) != 1 or format_of(artifacts[0]) not in ("tflite", "onnx")):
        raise SpnasError("--node-data writes the overlay of one artifact: give one int8 .tflite or .onnx")
    devices = request.ai_hub_device_names()
    report = load_report_beside(artifacts[0])
    if unknown := unprobed(artifacts):
        with console.step(f"opening {len(unknown)} artifact(s) no spnas export ran, in a probe process"):
            probe(unknown)
    runners = {}
    for artifact in artifacts:  # before any image or reference work, so a bad artifact fails at once
        runners[artifact] = load_runner(artifact)
        require_spnas_metadata(runners[artifact], artifact)
        if request.node_data and runners[artifact].precision != "int8":
            raise SpnasError(f"--node-data: {artifact} is {runners[artifact].precision}; the drift overlay is int8's")
    with console.step("loading reference weights"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = reference_checkpoint(request, report)
    spec = reference_spec(checkpoint, report, runners)
    with console.step("loading parity images"):
        images = parity_images(request, report, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = reference_model(checkpoint, report, spec)
    random_weights = model.weights_info.is_random
    if random_weights and request.strict:
        raise RandomWeightsRefused("--strict: the reference weights are random; parity against them proves nothing")
    reference = TorchRunner(model, spec).run(images.pixels)
    entries, int8_logits = [], {}
    folder = artifacts[0].parent  # the report read is the one beside the first artifact
    plan_lowerings = {(folder / entry["path"]).resolve() for entry in (report or {}).get("artifacts", [])
                      if lowers_plan(entry)}
    int8_plan, simulated = None, None
    if plan_lowerings & {a.resolve() for a in artifacts} and (folder / PLAN_FILE).is_file():
        with console.step(f"simulating {PLAN_FILE} on {len(images)} images"):
            int8_plan, simulated = simulate_plan(model, checked_plan(folder / PLAN_FILE, model), images.pixels, spec,
                                                 gates)
    for artifact in artifacts:
        with console.step(f"parity of {artifact.name} on {len(images)} images"):
            runner = runners[artifact]
            check_compatible(runner, artifact, model, reference)
            logits = runner.run(images.pixels)
            lowering = int8_plan is not None and artifact.resolve() in plan_lowerings
            result = (gate_lowering(logits, reference, int8_plan["simulation"], simulated, gates, random_weights)
                      if lowering else gate_logits(logits, reference, runner.precision, random_weights=random_weights,
                                                   thresholds=thresholds_for(runner.precision, gates)))
            entry = {"format": runner.format, "precision": runner.precision, "path": str(artifact),
                     "size_bytes": artifact_size(artifact), **result}
            if artifact.resolve() in plan_lowerings:
                int8_logits[str(artifact)] = logits
        if warning := runner.cpu_warning():
            console.warn(f"{artifact.name}: {warning}")
            entry["cpu_warning"] = warning
        if runner.format in ACCELERATED_FORMATS:
            with console.step(f"accelerator checks of {artifact.name}"):
                entry["accelerators"] = accelerators_of(artifact, runner.format, report)
        if request.explain and runner.precision == "int8":
            entry["explain"] = explain(artifact, images.pixels, model, spec, console)
            if request.node_data:
                from spnas.node_data import write_node_data

                entry["node_data"] = [str(p) for p in write_node_data(request.node_data, artifact, runner.format,
                                                                       entry["explain"])]
        if request.arm64:
            gate = Thresholds() if random_weights and runner.precision == "int8" else thresholds_for(runner.precision,
                                                                                                       gates)
            entry["arm64"] = arm64_parity(artifact, images.pixels, reference, gate, console)
            if entry["arm64"]["passed"] is False:
                entry["passed"] = False
                entry["gate"]["status"] = "failed"
                entry["gate"]["failures"].append("arm64: " + "; ".join(entry["arm64"]["failures"]))
        if devices:
            entry["ai_hub"] = ai_hub_parity(artifact, runner, images.pixels, reference,
                                            thresholds_for(runner.precision, gates), random_weights, devices, request,
                                            console)
            failed = [d for d in entry["ai_hub"] if d["passed"] is False]
            if failed:
                entry["passed"] = False
                entry["gate"]["status"] = "failed"
                entry["gate"]["failures"] += [f"{d['device']['name']}: " + "; ".join(d["gate"]["failures"])
                                              for d in failed]
        entries.append(entry)
    if tiers:
        cpu_tiers(request, tiers, artifacts, images.pixels, reference, simulated, plan_lowerings, random_weights,
                  entries, console)
    agreement = int8_agreement(int8_logits, reference, gates)
    validation = None
    if request.val:
        validation = verify_accuracy(request, report, checkpoint, spec, model, entries, console)
    result = Report.from_dict({"spnas_version": __version__, "weights": model.weights_info.to_dict(),
                               "images": {"n_images": len(images), "source": str(images.root)},
                               "validation": validation, "artifacts": entries, "int8_plan": int8_plan,
                               "int8_agreement": agreement},
                              kind="verify", exit_code=0 if all(entry["passed"] is not False for entry in entries)
                              and (agreement is None or agreement["passed"]) else 1)
    if request.json:
        atomic_write_text(request.json, result.to_json())
    if request.markdown:
        atomic_write_text(request.markdown, summary_markdown(entries) + "\n")
    return result


def accelerators_of(artifact, fmt: str, report) -> dict:
    """The export's accelerator checks when report.json holds this very file (same sha256), else the checkers
    that read the file (a ``.pte``'s partitions are known only where its graph was lowered: the export)."""
    from spnas.accelerators import check
    from spnas.accelerators.schema import unchecked
    from spnas.io import artifact_sha256

    digest = artifact_sha256(artifact)
    recorded = next((entry.get("accelerators") for entry in (report or {}).get("artifacts", [])
                     if entry.get("sha256") == digest and entry.get("accelerators")), None)
    if recorded:
        return recorded
    if fmt == "executorch":
        return {"xnnpack": unchecked("spnas-export", "no report.json entry of this .pte: its XNNPACK partition is "
                                                    "counted when spnas-export lowers it")}
    return check(artifact, fmt)


def verify_accuracy(request: VerifyRequest, report, checkpoint, spec, model, entries, console) -> dict:
    """``--val``: task accuracy of the reference and each artifact; the set must not overlap the export's
    calibration images (report.json's manifest) by sha256."""
    from spnas.classes import class_names_for
    from spnas.reference import TorchRunner
    from spnas.validation import check_disjoint, load_valset, validate_entries

    names = (report or {}).get("classes", {}).get("names") or class_names_for(
        checkpoint.num_classes, checkpoint.label_names)[0]
    valset = load_valset(request.val, names)
    if report:
        check_disjoint(valset, report["calibration"]["manifest"])
    return validate_entries(valset, spec, TorchRunner(model, spec), entries, ".", console,
                            max_accuracy_drop=request.max_accuracy_drop, workers=request.val_workers)


def check_compatible(runner, artifact, model, reference) -> None:
    """An artifact of another class count than the reference cannot be compared: say which weights it needs."""
    classes = (getattr(runner, "metadata", None) or {}).get("spnas.num_classes")
    if classes is not None and int(classes) != reference.shape[1]:
        raise SpnasError(f"{artifact}: {classes} classes, but the reference ({model.weights_info.source}) has "
                         f"{reference.shape[1]}; pass the weights it was exported from with --weights")


def ai_hub_parity(artifact, runner, pixels, reference, thresholds, random_weights, devices, request: VerifyRequest,
                  console) -> list:
    """Each device's outputs gated against the reference as the host run is, plus their agreement with the host."""
    from spnas.bench.aihub import device_logits
    from spnas.gates import RecordedOutputs, evaluate
    from spnas.parity import compare, to_json_number

    with console.step(f"inference jobs for {artifact.name} on {len(devices)} AI Hub device(s)"):
        outcomes = device_logits(artifact, runner, pixels, devices, compute_unit=request.compute_unit or "cpu",
                                 options=request.ai_hub_options, timeout=request.ai_hub_timeout, progress=console.info)
    host = runner.run(pixels)
    results = []
    for outcome in outcomes.values():
        if "failure" in outcome:
            results.append({"device": outcome["device"], "passed": None, "failure": outcome["failure"]})
            continue
        gated = evaluate(RecordedOutputs(runner, outcome["logits"]), pixels, reference, thresholds=thresholds,
                         random_weights=random_weights)
        vs_host = {key: to_json_number(value) for key, value in compare(host, outcome["logits"]).items()}
        results.append({"device": outcome["device"], "job": outcome["job"], **gated, "vs_host": vs_host})
    return results


def checked_plan(path, model):
    """The ``quant_plan.json`` at ``path``, refused in one line unless it was made for ``model``'s weights."""
    from spnas.folding import fold_batchnorm
    from spnas.quantize import load_plan

    plan = load_plan(path)
    plan.check(fold_batchnorm(model), model.weights_info.sha256)
    return plan


def explain(artifact, pixels, model, spec, console) -> list[dict]:
    """Per-layer int8 loss of the plan the artifact lowers (the ``quant_plan.json`` beside it), in graph order:
    accumulated and local SQNR on the torch int8 simulation that every format's runtime follows
    (``spnas.quantize.drift``)."""
    from spnas.folding import fold_batchnorm
    from spnas.preprocess import normalize
    from spnas.quantize import PLAN_FILE
    from spnas.quantize.drift import layer_drift

    plan_path = Path(artifact).parent / PLAN_FILE
    if not plan_path.is_file():
        raise SpnasError(f"--explain needs the {PLAN_FILE} that the export wrote beside {artifact}")
    plan = checked_plan(plan_path, model)
    with console.step(f"per-layer loss of {plan_path} (int8 simulation)"):
        return layer_drift(fold_batchnorm(model), plan, normalize(pixels[:8], spec))


def cpu_tiers(request: VerifyRequest, tiers, artifacts, pixels, reference, simulated, plan_lowerings, random_weights,
              entries, console) -> None:
    """``--cpu``: every artifact on the emulated tiers; each entry gets its ``cpu_tiers`` block, and fails with it.
    ``simulated``: the plan's simulated logits on ``pixels`` (None without a plan), which every lowering is held to."""
    from spnas.arm64.tiers import verify_tiers
    from spnas.gates import thresholds_for
    from spnas.parity import Thresholds

    count = min(request.cpu_images, len(pixels))
    simulations = {str(artifact.resolve()): simulated[:count] for artifact in artifacts
                   if simulated is not None and artifact.resolve() in plan_lowerings}
    thresholds = {precision: Thresholds() if random_weights and precision == "int8"
                  else thresholds_for(precision, request.gates) for precision in ("fp32", "fp16", "int8")}
    with console.step(f"CPU tiers {', '.join(tiers)} under emulation"):
        blocks = verify_tiers(artifacts, pixels, reference, tiers, simulations=simulations, thresholds=thresholds,
                              max_images=count, progress=console.info)
    for artifact, entry in zip(artifacts, entries, strict=True):
        entry["cpu_tiers"] = blocks[str(artifact.resolve())]
        if not entry["cpu_tiers"]["passed"]:
            entry["passed"] = False
            entry["gate"]["status"] = "failed"
            entry["gate"]["failures"].append("cpu tiers: " + "; ".join(entry["cpu_tiers"]["failures"]))


def arm64_parity(artifact, pixels, reference, thresholds, console) -> dict:
    """Bit-exactness of the aarch64 kernels vs x86, and the precision's gate vs the reference."""
    from spnas.arm64 import verify_arm64

    with console.step(f"aarch64 parity of {artifact.name} under emulation"):
        result = verify_arm64(artifact, pixels, reference, thresholds=thresholds, progress=console.info)
    return result
