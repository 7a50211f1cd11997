"""ONNX int8 in ONNX Runtime: which quantization scheme is both faster than fp32 and faithful.

Protocol (shared by all issues): fixture weights, calibrate on labels.csv rows 0-127, evaluate on
rows 600-799 against the PyTorch reference.  Every scheme of ``spnas.export.onnx.Int8Scheme``
that the issue asks about is built from the same fp32 export:

- fidelity: top-1 agreement and logit SQNR for each scheme (calibration ranges are computed
  once per method and reused, since they do not depend on the scheme);
- speed: batch-1 ``invoke`` latency of each model and of fp32 at 1 and 2 intra-op threads,
  measured interleaved (round-robin, many rounds) in one process, reported as the ratio of
  medians to fp32 measured in the same rounds, because the machine is shared and absolute
  times drift;
- session options for fp32 and the chosen int8: optimization level, an offline-optimized model,
  thread spinning (the main table uses ``spnas.export.onnx.session_options``: spinning off).

Run: ``python benchmarks/onnx_int8.py [--rounds 15] [--shared ../shared/data]``.
Writes ``benchmarks/results/onnx_int8.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from shared_data import SHARED_DATA, fixture_protocol  # noqa: E402

from spnas.export import onnx as onnx_format  # noqa: E402
from spnas.export.onnx import Int8Scheme  # noqa: E402
from spnas.parity import compare  # noqa: E402

ORT_DEFAULT = Int8Scheme(activation_type="int8", per_channel=False, calibration="minmax", float_classifier=False)
CHOSEN = Int8Scheme()


def scheme_name(scheme: Int8Scheme) -> str:
    parts = [scheme.quant_format, "U8S8" if scheme.activation_type == "uint8" else "S8S8",
             "per-channel" if scheme.per_channel else "per-tensor"]
    if scheme.reduce_range:
        parts.append("reduce_range")
    parts.append(scheme.calibration + (f"{scheme.percentile:g}" if scheme.calibration == "percentile" else ""))
    parts.append("float-classifier" if scheme.float_classifier else "int8-classifier")
    return " ".join(parts)


def speed_key(scheme: Int8Scheme) -> tuple:
    """Calibration ranges do not change the graph, so one model per key is timed."""
    return scheme.quant_format, scheme.activation_type, scheme.per_channel, scheme.reduce_range, \
        scheme.float_classifier


def schemes() -> list[Int8Scheme]:
    found = [ORT_DEFAULT, replace(ORT_DEFAULT, per_channel=True)]
    for quant_format in ("QDQ", "QOperator"):
        for activation_type in ("int8", "uint8"):
            for per_channel in (False, True):
                for reduce_range in (False, True):
                    found.append(Int8Scheme(quant_format=quant_format, activation_type=activation_type,
                                            per_channel=per_channel, reduce_range=reduce_range))
    for calibration in ("minmax", "entropy", "percentile"):
        for float_classifier in (False, True):
            found.append(replace(CHOSEN, calibration=calibration, float_classifier=float_classifier))
    found.extend(replace(CHOSEN, percentile=p) for p in (99.99, 99.9999))
    unique = []
    for scheme in found:
        if scheme not in unique:
            unique.append(scheme)
    return unique


def interleaved_ms(sessions: dict[str, ort.InferenceSession], feed: dict, rounds: int, per_round: int) -> dict:
    """Median ms per session; sessions alternate every ``per_round`` runs so drift hits all alike."""
    for session in sessions.values():
        for _ in range(5):
            session.run(None, feed)
    times = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(None, feed)
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def make_session(path: Path, threads: int, level=None, spinning: bool = False) -> ort.InferenceSession:
    options = onnx_format.session_options(threads, spinning)
    if level is not None:
        options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED_DATA)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_int8.json")
    args = parser.parse_args()

    model, calib, held_out, reference = fixture_protocol(args.shared)

    with tempfile.TemporaryDirectory(prefix="spnas-onnx-bench.") as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        onnx.save(onnx_format.export_float(model), str(fp32_path))
        prepared = onnx_format.prepare_for_quantization(fp32_path, work / "prepared.onnx")
        fp32_metrics = compare(reference, onnx_format.load(fp32_path).run(held_out))
        print(f"fp32: max rel error {fp32_metrics['max_rel_error']:.2e}, SQNR {fp32_metrics['sqnr_db']:.1f} dB")

        ranges, calibration_s = {}, {}
        for scheme in schemes():
            key = (scheme.calibration, scheme.percentile if scheme.calibration == "percentile" else None)
            if key not in ranges:
                start = time.perf_counter()
                ranges[key] = onnx_format.calibrate(prepared, calib, scheme.calibration, scheme.percentile,
                                                    work_dir=work)
                label = f"{key[0]}{key[1] or ''}"
                calibration_s[label] = round(time.perf_counter() - start, 1)
                print(f"calibrated {label}: {calibration_s[label]} s", flush=True)

        rows, speed_models = [], {}
        for index, scheme in enumerate(schemes()):
            key = (scheme.calibration, scheme.percentile if scheme.calibration == "percentile" else None)
            path = onnx_format.quantize(prepared, work / f"int8_{index}.onnx", ranges[key], scheme)
            metrics = compare(reference, onnx_format.load(path).run(held_out))
            speed_models.setdefault(speed_key(scheme), path)
            rows.append({"name": scheme_name(scheme), "scheme": scheme.to_dict(), "speed_key": speed_key(scheme),
                         "top1_agreement": metrics["top1_agreement"], "sqnr_db": round(metrics["sqnr_db"], 2),
                         "cosine": metrics["cosine"], "max_rel_error": metrics["max_rel_error"]})
            print(f"{rows[-1]['name']:<70} top-1 {metrics['top1_agreement']:.3f}  SQNR {metrics['sqnr_db']:.2f} dB",
                  flush=True)

        feed = {onnx_format.INPUT_NAME: onnx_format.load(fp32_path).prepare(held_out[:1])}
        speed = {}
        for threads in (1, 2):
            sessions = {"fp32": make_session(fp32_path, threads)}
            sessions.update({repr(key): make_session(path, threads) for key, path in speed_models.items()})
            medians = interleaved_ms(sessions, feed, args.rounds, args.per_round)
            speed[threads] = {name: {"ms": round(ms, 3), "ratio_to_fp32": round(ms / medians["fp32"], 3)}
                              for name, ms in medians.items()}
            print(f"{threads} thread(s): fp32 {medians['fp32']:.2f} ms", flush=True)
        for row in rows:
            for threads in (1, 2):
                row[f"ratio_{threads}t"] = speed[threads][repr(tuple(row["speed_key"]))]["ratio_to_fp32"]
            row["speed_key"] = list(row["speed_key"])

        chosen_path = speed_models[speed_key(CHOSEN)]
        session_study = {}
        for threads in (1, 2):
            sessions = {}
            for label, path in (("fp32", fp32_path), ("int8", chosen_path)):
                for level_name, level in (("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                                          ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
                                          ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
                    sessions[f"{label} {level_name}"] = make_session(path, threads, level)
                sessions[f"{label} all spinning"] = make_session(path, threads, spinning=True)
                offline = work / f"{label}_offline_{threads}.onnx"
                options = onnx_format.session_options(threads)
                options.optimized_model_filepath = str(offline)
                ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                sessions[f"{label} offline-all"] = make_session(
                    offline, threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            medians = interleaved_ms(sessions, feed, max(5, args.rounds // 2), args.per_round)
            session_study[threads] = {name: {"ms": round(ms, 3),
                                             "ratio_to_fp32_all": round(ms / medians["fp32 all"], 3)}
                                      for name, ms in medians.items()}
        startup = {}
        for label, path in (("fp32", fp32_path), ("int8", chosen_path),
                            ("int8 offline-all", work / "int8_offline_1.onnx")):
            level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if "offline" in label else None
            start = time.perf_counter()
            for _ in range(3):
                make_session(path, 1, level)
            startup[label] = round((time.perf_counter() - start) / 3 * 1e3, 1)
        graph_ops = sorted({n.op_type for n in onnx.load(str(chosen_path)).graph.node})

    chosen = next(row for row in rows if row["scheme"] == CHOSEN.to_dict())
    default = next(row for row in rows if row["scheme"] == ORT_DEFAULT.to_dict())
    result = {
        "protocol": "fixture weights; calibrate labels.csv rows 0-127, evaluate rows 600-799; batch 1; "
                    f"speed = ratio of medians, interleaved, {args.rounds} rounds x {args.per_round} runs",
        "machine": {"cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
                    "onnx": onnx.__version__},
        "fp32_parity": {"max_rel_error": fp32_metrics["max_rel_error"], "sqnr_db": fp32_metrics["sqnr_db"]},
        "calibration_seconds": calibration_s,
        "speed": {f"{threads}_threads": value for threads, value in speed.items()},
        "schemes": rows,
        "session_options": {f"{threads}_threads": value for threads, value in session_study.items()},
        "session_startup_ms": startup,
        "chosen": {"name": chosen["name"], "top1_agreement": chosen["top1_agreement"], "sqnr_db": chosen["sqnr_db"],
                   "ratio_1t": chosen["ratio_1t"], "ratio_2t": chosen["ratio_2t"], "int8_graph_ops": graph_ops},
        "ort_default": {"name": default["name"], "top1_agreement": default["top1_agreement"],
                        "sqnr_db": default["sqnr_db"], "ratio_1t": default["ratio_1t"],
                        "ratio_2t": default["ratio_2t"]},
        "targets": {"ratio_max": 0.8, "top1_goal": 0.99, "sqnr_goal_db": 36.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'scheme':<70} {'top-1':>6} {'SQNR':>6} {'1t':>6} {'2t':>6}")
    for row in rows:
        print(f"{row['name']:<70} {row['top1_agreement']:6.3f} {row['sqnr_db']:6.2f} "
              f"{row['ratio_1t']:5.2f}x {row['ratio_2t']:5.2f}x")
    print("\nsession options (ratio to fp32 at ORT_ENABLE_ALL):")
    for threads, table in session_study.items():
        print(f"  {threads} thread(s): " + ", ".join(f"{k} {v['ratio_to_fp32_all']:.2f}x" for k, v in table.items()))
    print(f"session start-up ms: {startup}")
    print(f"\nchosen: {chosen['name']}: int8/fp32 {chosen['ratio_1t']:.2f}x at 1 thread, {chosen['ratio_2t']:.2f}x at "
          f"2 threads (target <= 0.8x); top-1 {chosen['top1_agreement']:.3f}, SQNR {chosen['sqnr_db']:.1f} dB "
          f"(ORT defaults {default['top1_agreement']:.3f} / {default['sqnr_db']:.1f} dB); wrote {args.out}")


if __name__ == "__main__":
    main()
