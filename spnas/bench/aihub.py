"""Real phones on Qualcomm AI Hub's hosted fleet, through the official ``qai-hub`` client.

One job per (artifact, device) is submitted at once from a thread pool, then every job is
polled until it finishes or ``timeout`` passes, with a progress line per state change.
Profile jobs (``spnas-bench --ai-hub``) become records of ``spnas.bench``'s schema: median
and spread from the per-run times (``all_inference_times``), peak memory ranges, load
times, the compute unit, the device (name, OS, chipset) and per-layer times under timm's
layer names where the profile's names carry them.  Inference jobs (``spnas-verify
--ai-hub``) return the device's raw outputs, decoded as the host runner decodes its own.

The token is the client's business: it reads ``qai-hub configure``'s file itself
(``~/.qai_hub/client.ini`` or ``$QAIHUB_CLIENT_INI``) and spnas never sees it.  The client
is imported only here and only when used.  A job that fails or outlives the timeout fails
its own record; the others still report.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas.errors import SpnasError

CLIENT_HINT = "needs the 'qai-hub' client: pip install 'spnas[hub]', then run `qai-hub configure --api_token TOKEN`"
COMPUTE_UNITS = ("cpu", "gpu", "npu")
POLL_SECONDS = 10.0
DEFAULT_TIMEOUT_S = 3600.0
RUNTIMES = {"tflite": "TFLite runtime", "onnx": "ONNX Runtime"}
FC_TYPES = ("FULLY_CONNECTED", "Gemm", "MatMul")
PEAK_METHOD = ("AI Hub profile: upper bound of the inference stage's peak memory range "
               "(execution_summary inference_memory_peak_range), MiB")


def import_client():
    try:
        import qai_hub
    except ModuleNotFoundError as exc:
        raise SpnasError(f"--ai-hub {CLIENT_HINT}") from exc
    return qai_hub


def client_message(exc: BaseException) -> str:
    """The client's multi-line, boxed messages as one line."""
    lines = [line.strip(" |│┌┐└┘─") for line in str(exc).splitlines()]
    return " ".join(line for line in lines if line) or type(exc).__name__


@contextlib.contextmanager
def client_errors(hub, what: str):
    """Turn the client's exceptions (UserError, InternalError, ...) into one-line SpnasErrors."""
    try:
        yield
    except hub.Error as exc:
        raise SpnasError(f"AI Hub, {what}: {client_message(exc)}") from exc


def parse_device_names(text: str) -> list[str]:
    """``"Samsung Galaxy S24,Google Pixel 8"`` -> names, in order, without repeats."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise SpnasError("--ai-hub: give at least one device name, e.g. \"Samsung Galaxy S24\"")
    return list(dict.fromkeys(names))


def read_device_file(path: str | Path) -> list[str]:
    """One device name a line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpnasError(f"--ai-hub-devices {path}: cannot read it ({exc})") from exc
    names = [line.split("#", 1)[0].strip() for line in lines]
    return parse_device_names(",".join(name for name in names if name))


def device_names(names: str | None, device_file: str | Path | None) -> list[str] | None:
    """The devices of ``--ai-hub`` and ``--ai-hub-devices`` together, in order without repeats; None without either."""
    if not names and not device_file:
        return None
    found = parse_device_names(names) if names else []
    found += read_device_file(device_file) if device_file else []
    return list(dict.fromkeys(found))


def misused_flag(compute_unit: str | None, options: str, timeout: float) -> str | None:
    """The first AI Hub-only flag set away from its default, for a usage error when no device is given."""
    flags = (("--compute-unit", compute_unit), ("--ai-hub-options", options), ("--ai-hub-timeout", timeout != 3600.0))
    return next((flag for flag, value in flags if value), None)


def job_options(compute_unit: str, extra: str = "") -> str:
    """The job's options string: ``--compute_unit`` from ``--compute-unit``, then the user's pass-through."""
    if compute_unit not in COMPUTE_UNITS:
        raise SpnasError(f"--compute-unit {compute_unit!r}: choose from {', '.join(COMPUTE_UNITS)}")
    try:
        words = shlex.split(extra)
    except ValueError as exc:
        raise SpnasError(f"--ai-hub-options {extra!r}: {exc}") from exc
    if any(word.split("=")[0] == "--compute_unit" for word in words):
        raise SpnasError("--ai-hub-options must not set --compute_unit; use --compute-unit cpu|gpu|npu")
    return shlex.join(["--compute_unit", compute_unit, *words])


def device_facts(device) -> dict:
    """Name, OS and chipset of a client ``Device`` from its attributes (``chipset:...``, ``os:android``)."""
    attributes = [device.attributes] if isinstance(device.attributes, str) else list(device.attributes)
    tagged = {}
    for attribute in attributes:
        key, _, value = attribute.partition(":")
        tagged.setdefault(key, value)
    return {"name": device.name, "os": tagged.get("os"), "os_version": device.os or None,
            "chipset": tagged.get("chipset"), "vendor": tagged.get("vendor"), "form_factor": tagged.get("format"),
            "attributes": attributes}


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text or ""))


def resolve_device(hub, name: str):
    """The named device with its newest OS (what AI Hub itself picks for a name alone), pinned so the
    record says what ran; an unknown name fails before any job is submitted."""
    with client_errors(hub, f"looking up device {name!r}"):
        matches = hub.get_devices(name=name)
    if not matches:
        raise SpnasError(f"AI Hub has no device named {name!r} (names are exact; `qai-hub list-devices` lists them)")
    newest = max(matches, key=lambda device: _version_key(device.os))
    return hub.Device(newest.name, newest.os, newest.attributes)


@dataclass
class Plan:
    """One job to run: an artifact on a device, and what became of it."""

    artifact: Path
    device: object
    job: object = None
    status: object = None
    failure: str | None = None

    @property
    def label(self) -> str:
        return f"[{self.device.name}] {self.artifact.name}"


def run_jobs(hub, plans: list[Plan], submit, *, timeout: float, poll: float, progress) -> list[Plan]:
    """Submit every plan at once (``submit(plan)`` returns the client's job), then poll them all.

    Returns the plans with ``status`` (finished) or ``failure`` (a one-line reason) set."""

    def submit_one(plan: Plan) -> None:
        try:
            plan.job = submit(plan)
            progress(f"{plan.label}: submitted job {plan.job.job_id} ({plan.job.url})")
        except hub.Error as exc:
            plan.failure = f"submission refused: {client_message(exc)}"

    with ThreadPoolExecutor(max_workers=min(16, len(plans))) as pool:
        list(pool.map(submit_one, plans))
    start = time.monotonic()
    last: dict[int, str] = {}
    while True:
        waiting = [plan for plan in plans if plan.failure is None and plan.status is None]
        for plan in waiting:
            try:
                status = plan.job.get_status()
            except hub.Error as exc:
                plan.failure = f"job {plan.job.job_id}: {client_message(exc)}"
                continue
            if last.get(id(plan)) != status.code:
                last[id(plan)] = status.code
                progress(f"{plan.label}: {status.code}" + (f" ({status.message})" if status.message else ""))
            if status.finished:
                plan.status = status
                if status.failure:
                    plan.failure = f"job {plan.job.job_id} failed: {status.message or 'no reason given'}"
        waiting = [plan for plan in plans if plan.failure is None and plan.status is None]
        if not waiting:
            return plans
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            for plan in waiting:
                plan.failure = (f"job {plan.job.job_id} still {last.get(id(plan), 'unknown')} after {timeout:g} s "
                                f"(--ai-hub-timeout); it may still finish: {plan.job.url}")
            return plans
        progress(f"AI Hub: {len(plans) - len(waiting)}/{len(plans)} job(s) finished, {elapsed:.0f} s elapsed")
        time.sleep(min(poll, max(timeout - elapsed, 0.0)))


def check_artifacts(artifacts: list[Path]) -> None:
    for artifact in artifacts:
        if artifact.suffix.lower() not in (".tflite", ".onnx") or not artifact.is_file():
            raise SpnasError(f"{artifact}: --ai-hub runs .tflite and .onnx files only (and the file must exist)")


def _prepared_fleet(hub, artifacts: list[Path], device_names: list[str], progress):
    """Token check, device look-up and one upload per artifact, all before any job is submitted."""
    with client_errors(hub, "reading the client configuration (`qai-hub configure --api_token TOKEN`)"):
        hub.set_verbose(False)  # our own progress lines instead of the client's; the first call reads the token
    devices = [resolve_device(hub, name) for name in device_names]
    models = {}
    for artifact in artifacts:
        progress(f"uploading {artifact.name}")
        with client_errors(hub, f"uploading {artifact.name}"):
            models[artifact] = hub.upload_model(str(artifact))
    return devices, models


def submit_profile(hub, model, device, options: str):
    """A profile job: ``submit_inference_job(profile=True)`` from 0.56 on, ``submit_profile_job`` before."""
    import inspect

    if "profile" in inspect.signature(hub.submit_inference_job).parameters:
        return hub.submit_inference_job(model, device, inputs=None, options=options, profile=True)
    return hub.submit_profile_job(model, device, options=options)


def run_ai_hub(artifacts: list[Path], device_names: list[str], *, compute_unit: str = "cpu", options: str = "",
               timeout: float = DEFAULT_TIMEOUT_S, poll: float | None = None, progress=print) -> dict:
    """Profile every artifact on every device; the JSON document of ``spnas-bench --ai-hub``."""
    from spnas.bench import add_ratios
    from spnas.version import __version__

    options = job_options(compute_unit, options)
    check_artifacts(artifacts)
    hub = import_client()
    devices, models = _prepared_fleet(hub, artifacts, device_names, progress)
    plans = [Plan(artifact, device) for device in devices for artifact in artifacts]
    run_jobs(hub, plans, lambda plan: submit_profile(hub, models[plan.artifact], plan.device, options),
             timeout=timeout, poll=POLL_SECONDS if poll is None else poll, progress=progress)
    records = []
    for plan in plans:
        if plan.failure is None:
            try:
                with client_errors(hub, f"downloading the profile of job {plan.job.job_id}"):
                    profile = plan.job.download_profile()
                records.append(profile_record(plan, profile, compute_unit))
                continue
            except SpnasError as exc:
                plan.failure = str(exc)
        records.append(failed_record(plan, compute_unit))
    if all(record["status"] == "failed" for record in records):
        raise SpnasError("every AI Hub job failed: " + "; ".join(f"{p.label}: {p.failure}" for p in plans))
    add_ratios(records, key=lambda record: (record["device_name"], record["threads"]))
    return {"spnas_version": __version__, "mode": "ai-hub", "client": {"qai_hub": str(hub.__version__)},
            "devices": [device_facts(device) for device in devices],
            "settings": {"compute_unit": compute_unit, "options": options, "timeout_s": timeout,
                         "timed": "AI Hub profile job: every timed run (execution_summary all_inference_times)",
                         "peak_rss_method": PEAK_METHOD},
            "results": records}


def _base_record(plan: Plan, compute_unit: str) -> dict:
    from spnas.bench.adb import precision_from_name
    from spnas.io import artifact_size

    fmt = "onnx" if plan.artifact.suffix.lower() == ".onnx" else "tflite"
    return {"artifact": plan.artifact.name, "path": str(plan.artifact), "format": fmt,
            "precision": precision_from_name(plan.artifact.name), "threads": None,
            "runtime": f"AI Hub profile job ({RUNTIMES[fmt]}, --compute_unit {compute_unit})",
            "size_bytes": artifact_size(plan.artifact), "device_name": plan.device.name,
            "device": device_facts(plan.device), "compute_unit": compute_unit,
            "job": {"id": plan.job.job_id, "url": plan.job.url} if plan.job is not None else None}


def failed_record(plan: Plan, compute_unit: str) -> dict:
    from spnas.bench import LATENCY_KEYS

    return {**_base_record(plan, compute_unit), "status": "failed", "failure": plan.failure,
            "latency_ms": dict.fromkeys(LATENCY_KEYS), "peak_rss_mb": None}


def _ms(microseconds) -> float | None:
    return None if microseconds is None else round(microseconds / 1000.0, 4)


def _mib(value) -> float | None:
    return None if value is None else round(value / 2**20, 2)


def _mib_range(bounds) -> list[float] | None:
    return None if not bounds else [_mib(value) for value in bounds]


def profile_record(plan: Plan, profile: dict, compute_unit: str) -> dict:
    """A profile's ``execution_summary`` (microseconds, bytes) and ``execution_detail`` as a bench record."""
    from spnas.bench import summarize

    summary = profile.get("execution_summary") if isinstance(profile, dict) else None
    if not summary or summary.get("estimated_inference_time") is None:
        raise SpnasError(f"job {plan.job.job_id} returned no profile (execution_summary is empty)")
    runs = summary.get("all_inference_times") or [summary["estimated_inference_time"]]
    peaks = {stage: _mib_range(summary.get(f"{stage}_memory_peak_range"))
             for stage in ("inference", "first_load", "warm_load", "compile")}
    layers = profile_layers(profile.get("execution_detail") or [])
    units: dict[str, int] = {}
    for layer in layers:
        units[layer["compute_unit"]] = units.get(layer["compute_unit"], 0) + 1
    layer_times: dict[str, float] = {}
    for layer in layers:
        if layer["timm_layer"] and layer["time_ms"] is not None:
            layer_times[layer["timm_layer"]] = round(layer_times.get(layer["timm_layer"], 0.0) + layer["time_ms"], 4)
    return {**_base_record(plan, compute_unit), "status": "ok",
            "latency_ms": {key: round(value, 4) if isinstance(value, float) else value
                           for key, value in summarize([t / 1000.0 for t in runs]).items()},
            "estimated_inference_ms": _ms(summary["estimated_inference_time"]),
            "load_ms": {"first": _ms(summary.get("first_load_time")), "warm": _ms(summary.get("warm_load_time"))},
            "peak_rss_mb": peaks["inference"][1] if peaks["inference"] else _mib(
                summary.get("estimated_inference_peak_memory")),
            "peak_memory_mb": {stage: bounds for stage, bounds in peaks.items() if bounds},
            "compute_units": units, "layer_times_ms": layer_times, "layers": layers}


def timm_layer_names() -> list[str]:
    """Every timm module a profile layer can belong to, from the architecture description."""
    from spnas.arch import decode_arch

    names = ["conv_stem", "conv_head", "global_pool", "classifier"]
    for block in decode_arch():
        parts = ("conv_dw", "conv_pw") if block.block_type == "ds" else ("conv_pw", "conv_dw", "conv_pwl")
        names += [block.name, *(f"{block.name}.{part}" for part in parts)]
    return names


def _known_prefix(text: str, names: list[str]) -> str | None:
    return max((name for name in names if text == name or text.startswith(name + ".")), key=len, default=None)


def timm_layer(name: str, layer_type: str, names: list[str]) -> str | None:
    """The timm module of a profile layer name: TFLite tensor names carry it as their first scope
    (``blocks.1.0.conv_pw/Conv2D``), ONNX node names as a path (``/blocks/blocks.1/blocks.1.0/conv_pw/Conv``);
    an unnamed fully connected layer is the classifier.  None when the name says nothing."""
    current = None
    for token in (t for t in name.split(";")[0].split("/") if t):
        found = _known_prefix(token, names) or (_known_prefix(f"{current}.{token}", names) if current else None)
        if found and (current is None or len(found) >= len(current)):
            current = found
    return current or ("classifier" if layer_type in FC_TYPES else None)


def profile_layers(detail: list[dict]) -> list[dict]:
    names = timm_layer_names()
    return [{"name": layer.get("name"), "type": layer.get("type"), "compute_unit": layer.get("compute_unit"),
             "time_ms": _ms(layer.get("execution_time")),
             "timm_layer": timm_layer(layer.get("name") or "", layer.get("type") or "", names)} for layer in detail]


# ---------------------------------------------------------------- on-device outputs (spnas-verify --ai-hub)


def input_name(runner) -> str:
    """The model input's name, as AI Hub's dataset schema keys it."""
    if runner.format == "onnx":
        from spnas.export.onnx_runtime import INPUT_NAME

        return INPUT_NAME
    return runner.input["name"]


def device_logits(artifact: Path, runner, pixels: np.ndarray, device_names: list[str], *,
                  compute_unit: str = "cpu", options: str = "", timeout: float = DEFAULT_TIMEOUT_S,
                  poll: float | None = None, progress=print) -> dict[str, dict]:
    """Run ``pixels`` (prepared by the host ``runner``, as an app feeds them) through ``artifact`` on each
    device; per device name: ``{"device": facts, "logits": (N, C) float32}`` or ``{"device", "failure"}``."""
    options = job_options(compute_unit, options)
    check_artifacts([artifact])
    hub = import_client()
    devices, models = _prepared_fleet(hub, [artifact], device_names, progress)
    prepared = runner.prepare(pixels)
    inputs = {input_name(runner): [sample[None] for sample in prepared]}
    plans = [Plan(artifact, device) for device in devices]
    run_jobs(hub, plans, lambda plan: hub.submit_inference_job(models[artifact], plan.device, inputs=inputs,
                                                               options=options, profile=False),
             timeout=timeout, poll=POLL_SECONDS if poll is None else poll, progress=progress)
    results = {}
    for plan in plans:
        facts = device_facts(plan.device)
        if plan.failure is None:
            try:
                with client_errors(hub, f"downloading the outputs of job {plan.job.job_id}"):
                    outputs = plan.job.download_output_data()
                results[plan.device.name] = {"device": facts, "job": {"id": plan.job.job_id, "url": plan.job.url},
                                             "logits": decode_outputs(runner, outputs, len(prepared))}
                continue
            except SpnasError as exc:
                plan.failure = str(exc)
        results[plan.device.name] = {"device": facts, "failure": plan.failure}
    return results


def decode_outputs(runner, outputs, count: int) -> np.ndarray:
    """The job's one output, one array per sample, stacked and decoded as the host runner decodes its own."""
    if not outputs or len(outputs) != 1:
        raise SpnasError(f"expected one output tensor from the device, got {sorted(outputs or {})}")
    (samples,) = outputs.values()
    if len(samples) != count:
        raise SpnasError(f"the device returned {len(samples)} outputs for {count} inputs")
    raw = np.concatenate([np.asarray(sample).reshape(1, -1) for sample in samples])
    return runner.decode(raw)
