"""The CPU-tier matrix, and what the ONNX int8 weight encoding costs: one plan's int8 artifacts on emulated CPUs.

- fidelity: ``spnas.arm64.tiers.verify_tiers`` runs the int8 .tflite, the int8 .onnx in both weight
  encodings (``portable``, the default; ``u8s8``, lowered here from the same ``quant_plan.json``)
  and the int8 .pte natively and under qemu-user on ``haswell`` (x86-64 AVX2, no VNNI),
  ``cortex-a53`` (no dotprod), ``cortex-a76`` (dotprod) and ``cortex-a710`` (i8mm): SQNR against
  the native run, the plan's simulation and the PyTorch reference.  Emulated time is not latency;
  no instruction counts either (Debian's static qemu-user cannot load TCG plugins);
- speed on this (native) CPU: batch-1 latency of ONNX fp32 and int8 in both encodings at 1 thread,
  interleaved in one process (ratios of medians: the machine is shared), and ORT's per-kernel
  profile of each (``benchmarks/onnx_int8.py``'s helpers).

Run: ``python benchmarks/cpu_tiers.py [--exports DIR] [--images 6]``; without ``--exports`` it
runs ``spnas-export --format all --int8`` on the fixture weights first.  Writes
``benchmarks/results/cpu_tiers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
from onnx_int8 import fp32_layer_names, interleaved_ms, kernel_times, make_session  # noqa: E402
from shared_data import SHARED_DATA  # noqa: E402

from spnas.arm64.tiers import TIERS, summary_table, verify_tiers  # noqa: E402
from spnas.export import onnx as onnx_format  # noqa: E402
from spnas.machine import machine_facts  # noqa: E402

INT8 = ("spnasnet_100_int8.tflite", "spnasnet_100_int8.onnx", "spnasnet_100_int8_u8s8.onnx", "spnasnet_100_int8.pte")


def export_all(shared: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spnas.cli.export", "--format", "all", "--int8", "--weights",
                    str(shared / "spnasnet_100_fixture.safetensors"), "--calib", str(shared / "imagenet-sample"),
                    "--num-calib", "64", "--num-parity", "20", "--out", str(out), "--quiet"], check=True)
    return time.perf_counter() - start


def lower_u8s8(exports: Path, folded) -> Path:
    """The same plan lowered with int8 weights everywhere (``--onnx-int8 u8s8``), the portable one's metadata."""
    from spnas.quantize import load_plan

    portable = onnx.load(str(exports / "spnasnet_100_int8.onnx"))
    with tempfile.TemporaryDirectory() as work:
        model = onnx_format.lower(onnx.load(str(exports / "spnasnet_100_fp32.onnx")), load_plan(
            exports / "quant_plan.json"), folded, Path(work), weights="u8s8")
    del model.metadata_props[:]
    model.metadata_props.extend(portable.metadata_props)
    for prop in model.metadata_props:
        if prop.key == "spnas.int8_scheme":
            prop.value = json.dumps({**json.loads(prop.value), **onnx_format.scheme("u8s8")})
    path = exports / "spnasnet_100_int8_u8s8.onnx"
    onnx.save(model, str(path))
    return path


def onnx_speed(exports: Path, rounds: int, per_round: int, profile_runs: int) -> dict:
    """1-thread latency of fp32, portable and u8s8 int8 (interleaved) and each one's kernel profile."""
    paths = {"fp32": exports / "spnasnet_100_fp32.onnx", "int8 portable": exports / "spnasnet_100_int8.onnx",
             "int8 u8s8": exports / "spnasnet_100_int8_u8s8.onnx"}
    runner = onnx_format.load(paths["fp32"])
    from spnas.images import labelled_rows

    feed = {onnx_format.INPUT_NAME: runner.prepare(labelled_rows(SHARED_DATA / "imagenet-sample" / "labels.csv",
                                                                  600, 601).pixels)}
    sessions = {name: make_session(path, 1) for name, path in paths.items()}
    medians = interleaved_ms(sessions, feed, rounds, per_round)
    layer_of = fp32_layer_names(onnx.load(str(paths["fp32"])))
    with tempfile.TemporaryDirectory() as work:
        kernels = {name: kernel_times(path, feed, Path(work), layer_of, profile_runs) for name, path in paths.items()}
    return {"1_thread": {name: {"ms": round(ms, 3), "ratio_to_fp32": round(ms / medians["fp32"], 3)}
                         for name, ms in medians.items()},
            "kernels_1_thread": kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=Path, help="a spnas-export --format all --int8 folder (default: export)")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--tiers", default=",".join(TIERS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--profile-runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_tiers.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="spnas-cpu-tiers.") as tmp:
        exports = args.exports or Path(tmp) / "exports"
        export_s = None if args.exports else round(export_all(SHARED_DATA, exports), 1)
        import spnas
        from spnas.folding import fold_batchnorm

        model = spnas.create_model(str(SHARED_DATA / "spnasnet_100_fixture.safetensors"))
        lower_u8s8(exports, fold_batchnorm(model))
        speed = onnx_speed(exports, args.rounds, args.per_round, args.profile_runs)
        print(json.dumps(speed["1_thread"]), flush=True)

        from spnas.images import load_images
        from spnas.preprocess import DEFAULT_SPEC, normalize
        from spnas.quantize import load_plan, simulate
        from spnas.reference import TorchRunner
        from spnas.report import read_report

        report = read_report(exports / "report.json")
        root = Path(report["parity_images"]["source"])
        pixels = load_images([root / e["file"] for e in report["parity_images"]["manifest"][:args.images]],
                             root).pixels
        reference = TorchRunner(model).run(pixels)
        simulated = simulate(fold_batchnorm(model), load_plan(exports / "quant_plan.json"),
                             normalize(pixels, DEFAULT_SPEC))
        artifacts = [exports / name for name in INT8]
        plan_lowerings = [path for path in artifacts if path.suffix != ".pte"]  # ExecuTorch: its own PT2E flow
        start = time.perf_counter()
        blocks = verify_tiers(artifacts, pixels, reference, args.tiers.split(","), max_images=args.images,
                              simulations={str(path.resolve()): simulated for path in plan_lowerings})
        tiers_s = time.perf_counter() - start
        print(summary_table(blocks))
    facts = machine_facts()
    result = {
        "protocol": f"fixture weights; spnas-export --format all --int8 (64 calibration images); the u8s8 ONNX "
                    f"lowered from the same quant_plan.json; the report's first {args.images} parity images; "
                    "emulation: Debian's qemu-user (static, no TCG plugins: no instruction counts), 1 thread",
        "machine": {"cpu_model": facts.get("cpu_model"), "cpu_simd": facts.get("cpu_simd"),
                    "cpu_count": facts.get("cpu_count"),
                    "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
                    "note": "shared machine: timings are contended, compare ratios within one run"},
        "export_seconds": export_s,
        "tiers_seconds": round(tiers_s, 1),
        "onnx_speed_native": speed,
        "tiers": {Path(path).name: block for path, block in blocks.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{facts.get('cpu_model')}: wrote {args.out}")


if __name__ == "__main__":
    main()
