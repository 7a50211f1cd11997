"""A stand-in for the ``qai_hub`` client (0.56.0), built from its source; see ../README.md for what and why."""

from __future__ import annotations

import configparser
import itertools
import json
import os
import textwrap
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

__version__ = "0.56.0"

# (name, os, chipset, vendor, microseconds per MB of model on the CPU): invented figures, see README.md.
CATALOGUE = (
    ("Samsung Galaxy S24", "14", "qualcomm-snapdragon-8gen3", "samsung", 310),
    ("Samsung Galaxy S23", "13", "qualcomm-snapdragon-8gen2", "samsung", 380),
    ("Samsung Galaxy S23", "14", "qualcomm-snapdragon-8gen2", "samsung", 370),
    ("Google Pixel 8", "14", "google-tensor-g3", "google", 450),
)
UNIT_FACTOR = {"cpu": 1.0, "gpu": 0.45, "npu": 0.12}
_ids = itertools.count(1)
_lock = threading.Lock()


class Error(Exception):
    """Base class for all exceptions explicitly thrown by the API."""


class InternalError(Error):
    """Internal API failure."""


class UserError(Error):
    """Something in the user input caused a failure."""


def _visible_textbox(text: str) -> str:
    """The client's box around action items (``client._visible_textbox``)."""
    width = 70
    wrapper = textwrap.TextWrapper(width=width - 4)
    lines = ["| " + line.ljust(width - 4) + " |" for line in wrapper.wrap(textwrap.dedent(text).strip())]
    return "\n┌" + "─" * (width - 2) + "┐\n" + "\n".join(lines) + "\n└" + "─" * (width - 2) + "┘"


def _log(event: str, **fields) -> None:
    path = os.environ.get("FAKE_QAI_HUB_LOG")
    if path:
        with _lock, open(path, "a") as handle:
            handle.write(json.dumps({"event": event, "thread": threading.get_ident(), **fields}) + "\n")


def _config() -> dict:
    """What ``Client.config`` does on the first API call: read the ini, raise the client's errors."""
    path = os.path.expanduser(os.environ.get("QAIHUB_CLIENT_INI", "~/.qai_hub/client.ini"))
    if not os.path.exists(path):
        raise UserError("Failed to load client configuration file.\n" + _visible_textbox(
            f"{path} not found. Please request access at the AI Hub site. If you have access, please refer to the "
            "getting-started instructions for configuring the API key."))
    parser = configparser.ConfigParser()
    parser.read([path])
    if "api" not in parser or "api_token" not in parser["api"] or "api_url" not in parser["api"]:
        raise UserError("Failed to load configuration file.\n" + _visible_textbox(
            "Your API token is missing. Please go to your Account page to view your current token."))
    if os.environ.get("FAKE_QAI_HUB_OFFLINE") == "1":
        raise InternalError("Internal API failure.\n" + _visible_textbox(
            f"Could not connect to Qualcomm AI Hub. Please visit {parser['api']['api_url']} to check the "
            "service's status."))
    return dict(parser["api"])


def _switch(name: str, default):
    return json.loads(os.environ.get(name, "")) if os.environ.get(name) else default


@dataclass
class Device:
    name: str = ""
    os: str = ""
    attributes: str | list[str] = field(default_factory=list)


def _catalogue() -> list[Device]:
    return [Device(name, os_version, [f"chipset:{chipset}", "os:android", "framework:tflite", "framework:onnx",
                                      f"vendor:{vendor}", "format:phone"])
            for name, os_version, chipset, vendor, _ in CATALOGUE]


def set_verbose(verbose: bool = True) -> None:
    _config()


def get_devices(name: str = "", os: str = "", attributes: str | list[str] | None = None) -> list[Device]:
    _config()
    _log("get_devices", name=name, os=os)
    wanted = [attributes] if isinstance(attributes, str) else list(attributes or [])
    return [d for d in _catalogue() if (not name or d.name == name) and (not os or d.os == os)
            and all(a in d.attributes for a in wanted)]


class Model:
    def __init__(self, path: Path, name: str):
        self.model_id = f"m{next(_ids)}"
        self.name = name
        self.path = path


def upload_model(model, name: str | None = None, project=None) -> Model:
    _config()
    path = Path(model)
    if path.suffix not in (".tflite", ".onnx"):
        raise UserError(f"Unsupported model type for '{model}'.")
    _log("upload_model", path=str(path))
    return Model(path, name or path.name)


class JobStatus:
    class State(Enum):
        SUCCESS = 1
        FAILED = 2
        CREATED = 3
        PROVISIONING_DEVICE = 4
        MEASURING_PERFORMANCE = 5
        RUNNING_INFERENCE = 6

    def __init__(self, state: JobStatus.State, message: str | None = None):
        self.state, self.message = state, message

    code = property(lambda self: self.state.name)
    success = property(lambda self: self.state is JobStatus.State.SUCCESS)
    failure = property(lambda self: self.state is JobStatus.State.FAILED)
    finished = property(lambda self: self.success or self.failure)
    pending = property(lambda self: self.state is JobStatus.State.CREATED)
    running = property(lambda self: not (self.finished or self.pending))


class InferenceJob:
    """Advances one state per ``get_status`` call: CREATED, PROVISIONING_DEVICE, MEASURING/RUNNING, then final."""

    def __init__(self, model: Model, device: Device, inputs, options: str, profile: bool):
        self.job_id = f"j{next(_ids)}"
        self.model, self.device, self.inputs, self.options, self.profiling = model, device, inputs, options, profile
        self.name = model.name
        self.url = f"fake://jobs/{self.job_id}/"
        running = JobStatus.State.MEASURING_PERFORMANCE if profile else JobStatus.State.RUNNING_INFERENCE
        self._states = [JobStatus.State.CREATED, JobStatus.State.PROVISIONING_DEVICE, running]
        self._polls = 0

    def get_status(self) -> JobStatus:
        _config()
        self._polls += 1
        _log("get_status", job=self.job_id, device=self.device.name)
        if self._polls <= len(self._states) or self.device.name in _switch("FAKE_QAI_HUB_STUCK", []):
            return JobStatus(self._states[min(self._polls, len(self._states)) - 1])
        failure = _switch("FAKE_QAI_HUB_FAIL", {}).get(self.device.name)
        return JobStatus(JobStatus.State.FAILED, failure) if failure else JobStatus(JobStatus.State.SUCCESS)

    def wait(self, timeout: int | None = None) -> JobStatus:
        for _ in range(100):
            status = self.get_status()
            if status.finished:
                return status
        raise TimeoutError(f"Waiting for inference job ({self.job_id}) completion timed out after {timeout} seconds.")

    def _unit(self) -> str:
        words = self.options.split()
        return words[words.index("--compute_unit") + 1] if "--compute_unit" in words else "all"

    def download_profile(self) -> dict:
        if not self.wait().success:
            return {}
        per_mb = next(c[4] for c in CATALOGUE if c[0] == self.device.name)
        unit = self._unit()
        base = per_mb * self.model.path.stat().st_size / 1e6 * UNIT_FACTOR.get(unit, 0.12) + 900
        times = [int(base * (1 + 0.03 * np.sin(i))) for i in range(100)]
        size = self.model.path.stat().st_size
        peak = (size + 9_000_000, size + 12_000_000)
        layers = _layer_names(self.model.path.suffix)
        detail = [{"name": name, "type": kind, "compute_unit": unit.upper() if unit != "all" else "NPU",
                   "execution_time": int(base / len(layers))} for name, kind in layers]
        summary = {"estimated_inference_time": min(times), "estimated_inference_peak_memory": peak[1],
                   "first_load_time": int(base * 40), "first_load_peak_memory": peak[1] + 4_000_000,
                   "warm_load_time": int(base * 6), "warm_load_peak_memory": peak[1],
                   "compile_time": 0, "compile_peak_memory": 0}
        for stage, bounds in (("compile", None), ("first_load", peak), ("warm_load", peak), ("inference", peak)):
            summary[f"{stage}_memory_increase_range"] = None if bounds is None else (bounds[0] - size, bounds[1] - size)
            summary[f"{stage}_memory_peak_range"] = bounds
        summary.update({"all_compile_times": [], "all_first_load_times": [summary["first_load_time"]],
                        "all_warm_load_times": [summary["warm_load_time"]] * 5, "all_inference_times": times})
        return {"execution_summary": summary, "execution_detail": detail}

    def download_output_data(self) -> dict[str, list[np.ndarray]] | None:
        if not self.wait().success or self.inputs is None:
            return None
        (samples,) = self.inputs.values()
        name, outputs = _host_outputs(self.model.path, samples)
        std = _switch("FAKE_QAI_HUB_NOISE", {}).get(self.device.name)
        if std:
            noise = np.random.default_rng(0)
            outputs = [(o + noise.normal(0, std, o.shape)).astype(o.dtype) if o.dtype.kind == "f"
                       else np.clip(o + noise.normal(0, std, o.shape).round(), -128, 127).astype(o.dtype)
                       for o in outputs]
        return {name: outputs}


ProfileJob = InferenceJob


def _layer_names(suffix: str) -> list[tuple[str, str]]:
    """Layer names shaped like our exporters' TFLite tensor names / ONNX node names, one unmappable last."""
    if suffix == ".onnx":
        return [("/conv_stem/Conv", "Conv"), ("/blocks/blocks.0/blocks.0.0/conv_dw/Conv", "Conv"),
                ("/blocks/blocks.1/blocks.1.0/conv_pw/Conv", "Conv"), ("/blocks/blocks.1/blocks.1.1/Add", "Add"),
                ("/conv_head/Conv", "Conv"), ("/classifier/Gemm", "Gemm"), ("logits_output_cast", "Cast")]
    return [("conv_stem/Relu;conv_stem/Conv2D", "CONV_2D"), ("blocks.0.0.conv_dw/depthwise", "DEPTHWISE_CONV_2D"),
            ("blocks.1.0.conv_pw/Relu;blocks.1.0.conv_pw/Conv2D", "CONV_2D"), ("blocks.1.1.add/add", "ADD"),
            ("conv_head/Conv2D", "CONV_2D"), ("StatefulPartitionedCall:0", "FULLY_CONNECTED"),
            ("tfl.quantize", "QUANTIZE")]


def _host_outputs(path: Path, samples: list[np.ndarray]) -> tuple[str, list[np.ndarray]]:
    """The model's raw outputs on the host runtime, one per sample, keyed by the output tensor's name."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
        return output_name, [session.run([output_name], {input_name: s})[0] for s in samples]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for sample in samples:
        interpreter.set_tensor(source["index"], sample)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(sink["index"]).copy())
    return sink["name"], outputs


def submit_inference_job(model, device, inputs=None, name=None, options: str = "", retry: bool = True,
                         profile: bool = True, project=None):
    _config()
    if inputs is None and not profile:
        raise UserError("Inference requires inputs. Either supply `inputs`, or set `profile=True` to run with "
                        "random data.")
    devices = device if isinstance(device, list) else [device]
    known = _catalogue()
    for dev in devices:
        if not any(k.name == dev.name and (not dev.os or k.os == dev.os) for k in known):
            raise UserError(f"{dev} is not available.")
    model = model if isinstance(model, Model) else upload_model(model)
    jobs = []
    for dev in devices:
        jobs.append(InferenceJob(model, dev, inputs, options.strip(), profile))
        _log("submit", job=jobs[-1].job_id, device=dev.name, os=dev.os, options=options.strip(), profile=profile,
             model=model.model_id, n_inputs=None if inputs is None else len(next(iter(inputs.values()))))
    return jobs[0] if len(jobs) == 1 else jobs


def submit_profile_job(model, device, name=None, options: str = "", retry: bool = True, project=None):
    print("\n===WARNING===\n\nsubmit_profile_job is deprecated and will be removed in a future release.\n")
    return submit_inference_job(model, device, None, name, options, retry, True, project)
