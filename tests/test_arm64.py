"""aarch64 LiteRT parity under qemu-user: orchestration unit tests, and one emulated end-to-end test.

The unit tests need no emulator (fake qemu scripts, synthetic outputs).  The ``arm64`` test
prepares (or reuses) the cached environment in ``$SPNAS_CACHE`` / ``~/.cache/spnas`` and runs
a small TensorFlow-converted model (fp32 and full int8) on emulated Cortex-A55 and A76.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from spnas.arm64 import env as arm64_env
from spnas.arm64 import verify as arm64_verify
from spnas.arm64.env import Arm64Env, PrivateApt, build_component, cache_state, choose_qemu, cpu_flag, fake_cpuinfo
from spnas.arm64.verify import compare_outputs, delegate_applied, gate_failures, guest_runner_args, plan_runs
from spnas.errors import SpnasError
from spnas.parity import DEFAULT_THRESHOLDS, Thresholds

QEMU10 = (10, 0, 2)
QEMU7 = (7, 2, 0)


def fake_qemu(folder: Path, version: str = "10.0.2", cpus: tuple[str, ...] = ("cortex-a55", "cortex-a76")) -> Path:
    """A shell script answering ``--version`` and ``-cpu help`` like qemu-aarch64."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "qemu-aarch64"
    cpu_lines = "".join(f"  {cpu}\\n" for cpu in cpus)
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo "qemu-aarch64 version {version} (Debian)"; '
                      f'else printf "Available CPUs:\\n{cpu_lines}"; fi\n')
    script.chmod(0o755)
    return script


def make_env(tmp_path: Path, version=QEMU10, qemu: Path | None = None) -> Arm64Env:
    rootfs = tmp_path / "rootfs"
    for sub in ("usr/bin", "lib", "proc"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    return Arm64Env(root=tmp_path, qemu=qemu or tmp_path / "qemu-aarch64", qemu_version=version, qemu_source="test",
                    rootfs=rootfs, site_packages=tmp_path / "site-packages", litert_version="2.3.0")


# ---------------------------------------------------------------- qemu version and workarounds


@pytest.mark.parametrize(("text", "expected"), [
    ("qemu-aarch64 version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright", (10, 0, 2)),
    ("qemu-aarch64 version 7.2.0 (Debian 1:7.2+dfsg-7+deb12u18)", (7, 2, 0)),
    ("qemu-aarch64-static version 8.1\n", (8, 1, 0)),
])
def test_parse_qemu_version(text, expected):
    assert arm64_env.parse_qemu_version(text) == expected


def test_parse_qemu_version_rejects_other_output():
    with pytest.raises(SpnasError, match="cannot read a qemu version"):
        arm64_env.parse_qemu_version("bash: qemu: command not found")


def test_cpu_flag_turns_sme_off_only_for_max_on_untrusted_qemu():
    assert cpu_flag("max", QEMU7) == "max,sme=off"
    assert cpu_flag("max", (9, 2, 0)) == "max,sme=off"
    assert cpu_flag("max", QEMU10) == "max"
    assert cpu_flag("cortex-a55", QEMU7) == "cortex-a55"


def test_fake_cpuinfo_names_the_core():
    text = fake_cpuinfo("cortex-a76", processors=2)
    assert text.count("processor\t:") == 2
    assert "CPU part\t: 0xd0b" in text and "asimddp" in text
    assert "asimddp" not in fake_cpuinfo("cortex-a53")
    with pytest.raises(SpnasError, match="named core"):
        fake_cpuinfo("max")


def test_command_on_qemu10_uses_the_rootfs_directly(tmp_path):
    env = make_env(tmp_path)
    command = env.command("cortex-a55", "runner.py", "model.tflite")
    assert command == [str(env.qemu), "-cpu", "cortex-a55", "-L", str(env.rootfs),
                       str(env.rootfs / "usr/bin/python3.11"), "runner.py", "model.tflite"]
    assert env.workarounds("cortex-a55") == []


def test_command_on_old_qemu_gets_a_fake_cpuinfo_view(tmp_path):
    env = make_env(tmp_path, version=QEMU7)
    command = env.command("cortex-a76", "runner.py")
    prefix = Path(command[4])
    assert prefix != env.rootfs
    assert "0xd0b" in (prefix / "proc" / "cpuinfo").read_text()
    assert (prefix / "usr").resolve() == (env.rootfs / "usr").resolve()
    assert command[5] == str(prefix / "usr/bin/python3.11")
    assert any("cpuinfo" in note for note in env.workarounds("cortex-a76"))
    with pytest.raises(SpnasError, match="needs a named core"):
        env.command("max", "runner.py")


def test_max_on_qemu9_runs_with_sme_off(tmp_path):
    env = make_env(tmp_path, version=(9, 2, 0))
    assert env.command("max", "runner.py")[2:5] == ["max,sme=off", "-L", str(env.rootfs)]
    assert any("sme=off" in note for note in env.workarounds("max"))


def test_guest_environment_puts_the_wheels_first_and_drops_host_python_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/host")
    monkeypatch.setenv("VIRTUAL_ENV", "/host/venv")
    variables = make_env(tmp_path).environment()
    assert variables["PYTHONPATH"] == str(tmp_path / "site-packages")
    assert "PYTHONHOME" not in variables and "VIRTUAL_ENV" not in variables


# ---------------------------------------------------------------- cache


def test_cache_root_follows_spnas_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPNAS_CACHE", str(tmp_path))
    assert arm64_env.cache_root() == tmp_path / "arm64"
    monkeypatch.delenv("SPNAS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert arm64_env.cache_root() == tmp_path / "xdg" / "spnas" / "arm64"


def test_cache_state_reports_ready_components_only_after_their_manifest(tmp_path):
    state = cache_state(tmp_path, "2.3.0")
    assert set(state) == {"qemu", "rootfs", "wheels"} and not any(c["ready"] for c in state.values())
    build_component(tmp_path / "qemu-user",
                    lambda work: (work / "qemu-aarch64").write_text("x") and {"version": [10, 0]})
    state = cache_state(tmp_path, "2.3.0")
    assert state["qemu"]["ready"] and state["qemu"]["version"] == [10, 0] and state["qemu"]["disk_bytes"] == 1
    assert not state["wheels"]["ready"]


def test_failed_component_build_leaves_nothing_behind(tmp_path):
    def broken(work):
        (work / "half-written").write_text("partial")
        raise SpnasError("download interrupted")

    with pytest.raises(SpnasError, match="interrupted"):
        build_component(tmp_path / "rootfs-bookworm", broken)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- choosing qemu and failure messages


def test_spnas_qemu_overrides_everything(tmp_path, monkeypatch):
    qemu = fake_qemu(tmp_path / "bin", version="9.2.1")
    monkeypatch.setenv("SPNAS_QEMU", str(qemu))
    assert choose_qemu(tmp_path / "cache", print) == (qemu, (9, 2, 1), "$SPNAS_QEMU")


def test_recent_qemu_on_path_is_used_without_download(tmp_path, monkeypatch):
    qemu = fake_qemu(tmp_path / "bin", version="8.2.2")
    monkeypatch.delenv("SPNAS_QEMU", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    path, version, _ = choose_qemu(tmp_path / "cache", print)
    assert (path, version) == (qemu, (8, 2, 2))
    assert not (tmp_path / "cache").exists()


def test_no_qemu_and_no_apt_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.delenv("SPNAS_QEMU", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SpnasError) as error:
        choose_qemu(tmp_path / "cache", print)
    message = str(error.value)
    assert "no qemu-aarch64 on PATH" in message and "apt-get" in message and "(as root)" in message
    assert "\n" not in message


def test_old_qemu_on_path_is_the_fallback_when_the_download_fails(tmp_path, monkeypatch):
    qemu = fake_qemu(tmp_path / "bin", version="7.2.0")
    monkeypatch.delenv("SPNAS_QEMU", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no apt-get: the download fails
    messages = []
    assert choose_qemu(tmp_path / "cache", messages.append)[:2] == (qemu, QEMU7)
    assert "workarounds" in messages[0]


def test_unknown_cpu_model_is_one_line(tmp_path):
    env = make_env(tmp_path, qemu=fake_qemu(tmp_path / "bin"))
    with pytest.raises(SpnasError, match="no CPU model 'cortex-x4'; it has cortex-a55, cortex-a76"):
        arm64_verify.check_cpus(env, ["cortex-a55", "cortex-x4"])


@pytest.mark.skipif(shutil.which("apt-get") is None or not arm64_env.DEBIAN_KEYRING.is_file(),
                    reason="needs apt-get and Debian's keyring")
def test_no_network_for_the_first_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SPNAS_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # loopback, nothing listens
    apt = PrivateApt(tmp_path / "apt", "arm64", "bookworm")
    with pytest.raises(SpnasError, match=r"^no network: cannot download .* from http://127\.0\.0\.1:9/debian"):
        apt.update()


def test_mirror_comes_from_the_hosts_apt_sources(tmp_path, monkeypatch):
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [signed-by=/k.gpg] http://mirror.test/debian/ bookworm main\n")
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "other.sources").write_text("Types: deb\nURIs: http://other.test/node\nSuites: x\n")
    (parts / "debian.sources").write_text("Types: deb\nURIs: http://deb822.test/debian\nSuites: bookworm\n")
    assert arm64_env.host_debian_mirror((one_line, parts)) == "http://mirror.test/debian/"
    assert arm64_env.host_debian_mirror((tmp_path / "missing", parts)) == "http://deb822.test/debian"
    monkeypatch.delenv("SPNAS_DEBIAN_MIRROR", raising=False)
    monkeypatch.setattr(arm64_env, "APT_SOURCES", (tmp_path / "missing",))
    with pytest.raises(SpnasError, match="SPNAS_DEBIAN_MIRROR"):
        arm64_env.mirror()
    monkeypatch.setenv("SPNAS_DEBIAN_MIRROR", "http://set.test/debian/")
    assert arm64_env.mirror() == "http://set.test/debian"


def test_non_tflite_artifact_is_refused(tmp_path):
    with pytest.raises(SpnasError, match="runs .tflite artifacts only"):
        arm64_verify.verify_arm64(tmp_path / "model.onnx", np.zeros((1, 224, 224, 3), np.uint8), np.zeros((1, 1000)))


# ---------------------------------------------------------------- comparison and gate


def test_guest_runner_args_put_xnnpack_first():
    args = guest_runner_args(Path("m.tflite"), Path("in.npy"), {"builtin": Path("b.npy"), "xnnpack": Path("x.npy")})
    assert args == ["m.tflite", "in.npy", "--run", "xnnpack=x.npy", "--run", "builtin=b.npy"]


def test_plan_runs_builtin_once():
    assert plan_runs(("cortex-a55", "cortex-a76"), "cortex-a76") == {"cortex-a55": ("xnnpack",),
                                                                     "cortex-a76": ("xnnpack", "builtin")}
    assert plan_runs(("cortex-a55",), None) == {"cortex-a55": ("xnnpack",)}
    with pytest.raises(SpnasError, match="no CPU models"):
        plan_runs((), None)


def test_delegate_applied_reads_the_xnnpack_run_only():
    log = ("spnas-guest: begin xnnpack\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
           "spnas-guest: end xnnpack\nspnas-guest: begin builtin\nspnas-guest: end builtin\n")
    assert delegate_applied(log)
    assert not delegate_applied("spnas-guest: begin xnnpack\nspnas-guest: end xnnpack\n"
                                "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")


def test_compare_outputs_counts_int8_steps():
    baseline = np.array([[10, -3, 7], [0, 5, 1]], dtype=np.int8)
    candidate = baseline.copy()
    assert compare_outputs(candidate, baseline)["bit_exact"]
    candidate[1, 1] = 8  # 3 steps, and top-1 of image 1 unchanged
    candidate[0, 2] = 12  # 5 steps, and top-1 of image 0 moves
    result = compare_outputs(candidate, baseline)
    assert not result["bit_exact"] and result["max_step_diff"] == 5 and result["differing_values"] == 2
    assert result["top1_agreement"] == 0.5


def test_compare_outputs_float_relative_error_and_kind_mismatch():
    baseline = np.array([[0.0, 2.0], [1.0, -2.0]], dtype=np.float32)
    result = compare_outputs(baseline + np.float32(4e-6), baseline)
    assert result["max_step_diff"] is None and result["max_rel_error"] == pytest.approx(1e-6, rel=0.05)
    with pytest.raises(SpnasError, match="differ in kind"):
        compare_outputs(baseline.astype(np.float16), baseline)


def synthetic_run(cpu="cortex-a55", xnnpack=True, bit_exact=True, applied=True, rel_error=0.0, top1=1.0):
    return {"cpu": cpu, "xnnpack": xnnpack, "xnnpack_applied": applied,
            "vs_x86": {"bit_exact": bit_exact, "differing_values": 0 if bit_exact else 7, "n_values": 8000,
                       "max_step_diff": 0 if bit_exact else 2},
            "vs_reference": {"max_rel_error": rel_error, "sqnr_db": "inf", "top1_agreement": top1}}


def test_gate_int8_xnnpack_must_be_bit_exact_builtin_need_not():
    loose = Thresholds()
    assert gate_failures([synthetic_run(), synthetic_run(xnnpack=False, bit_exact=False)], "int8", loose) == []
    failures = gate_failures([synthetic_run(cpu="cortex-a76", bit_exact=False)], "int8", loose)
    assert failures == ["cortex-a76 XNNPACK: 7 of 8000 outputs differ from x86 (max 2 steps)"]
    assert gate_failures([synthetic_run(bit_exact=False)], "fp32", loose) == []


def test_gate_fp32_relative_error_and_missing_xnnpack():
    failures = gate_failures([synthetic_run(rel_error=3e-5)], "fp32", DEFAULT_THRESHOLDS["fp32"])
    assert failures == ["cortex-a55 XNNPACK: relative error 3.00e-05 > 1e-05"]
    failures = gate_failures([synthetic_run(applied=False)], "fp32", DEFAULT_THRESHOLDS["fp32"])
    assert failures == ["cortex-a55 XNNPACK: LiteRT did not apply XNNPACK in the guest"]


# ---------------------------------------------------------------- a small real model


@pytest.fixture(scope="module")
def small_models(tmp_path_factory, calib_pixels, parity_pixels):
    """A small conv net with SPNasNet's op kinds (conv, depthwise, add, mean, dense), fp32 and full int8."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from spnas.preprocess import normalize

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((224, 224, 3), batch_size=1)
    x = layers.Conv2D(16, 3, strides=4, padding="same", activation=tf.nn.relu6)(inputs)
    y = layers.DepthwiseConv2D(3, padding="same", activation=tf.nn.relu6)(x)
    x = layers.Add()([x, layers.Conv2D(16, 1)(y)])
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    model = tf.keras.Model(inputs, layers.Dense(1000)(layers.GlobalAveragePooling2D()(x)))
    calibration = normalize(calib_pixels[:32], layout="NHWC")
    folder = tmp_path_factory.mktemp("arm64-models")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (folder / "small_fp32.tflite").write_bytes(converter.convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    (folder / "small_int8.tflite").write_bytes(converter.convert())
    reference = model.predict(normalize(parity_pixels, layout="NHWC"), batch_size=8, verbose=0)
    return folder, reference


def test_guest_runner_on_the_host_returns_raw_int8_outputs(small_models, parity_pixels, tmp_path):
    """The script the guest runs, run by the host Python: raw int8 out, both kernel settings."""
    from spnas.export.tflite import load

    folder, _ = small_models
    model = folder / "small_int8.tflite"
    np.save(tmp_path / "in.npy", load(model).prepare(parity_pixels[:3]))
    outputs = {"xnnpack": tmp_path / "x.npy", "builtin": tmp_path / "b.npy"}
    command = [sys.executable, str(arm64_verify.GUEST_RUNNER), *guest_runner_args(model, tmp_path / "in.npy", outputs)]
    summary = arm64_verify.run_guest_runner(command, outputs, "host")
    assert summary["machine"] == "x86_64" or summary["machine"] == os.uname().machine
    for kernels in outputs:
        run = summary["runs"][kernels]
        assert run["outputs"].dtype == np.int8 and run["outputs"].shape == (3, 1000) and run["output_scale"] > 0
    assert summary["runs"]["xnnpack"]["xnnpack_applied"]


@pytest.mark.arm64
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_arm64_parity_end_to_end(small_models, parity_pixels, precision):
    """Emulated Cortex-A55/A76: int8 XNNPACK bit-exact to x86, fp32 within 1e-5 of the reference."""
    folder, reference = small_models
    messages = []
    thresholds = Thresholds() if precision == "int8" else None  # random weights: int8 top-1 vs float is noise
    result = arm64_verify.verify_arm64(folder / f"small_{precision}.tflite", parity_pixels, reference, max_images=8,
                                       thresholds=thresholds, progress=messages.append)
    json.dumps(result)  # goes into the parity JSON as is
    assert result["environment"]["guest"]["machine"] == "aarch64"
    assert result["environment"]["guest"]["litert"] == result["environment"]["host_litert"]
    assert result["precision"] == precision and result["n_images"] == 8
    assert [(run["cpu"], run["xnnpack"]) for run in result["runs"]] == [
        ("cortex-a55", True), ("cortex-a76", True), ("cortex-a76", False)]
    assert result["passed"], result["failures"]
    for run in result["runs"]:
        assert run["vs_reference"]["top1_agreement"] >= 0.5 or precision == "int8"
        if run["xnnpack"]:
            assert run["xnnpack_applied"]
        else:
            assert "vs_x86_xnnpack" in run
        if precision == "int8" and run["xnnpack"]:
            assert run["vs_x86"]["bit_exact"] and run["vs_x86"]["max_step_diff"] == 0
        if precision == "fp32":
            assert run["vs_reference"]["max_rel_error"] <= 1e-5 and run["vs_x86"]["max_rel_error"] <= 1e-5
    assert any(message.startswith("arm64: emulated cortex-a76") for message in messages)
    assert "cortex-a55" in arm64_verify.summary_table(result)


def test_pip_download_command_pins_the_litert_2_wheel_tag():
    """pip quietly offers ai-edge-litert 1.4 for other aarch64 tags; the command must pin this one."""
    command = arm64_env.pip_download_command("2.3.0", Path("/tmp/w"))
    assert command[command.index("--platform") + 1] == "manylinux_2_27_aarch64"
    assert command[command.index("--python-version") + 1] == "3.11"
    assert "ai-edge-litert==2.3.0" in command and "--only-binary=:all:" in command
