"""CPU time per image of ``spnas.mil_eval`` against earlier versions of it, and bit-equality of their logits.

The CoreML artifacts are checked on Linux by this numpy evaluator, so its speed bounds ``--val``
(issue #27).  This loads each baseline's ``spnas/mil_eval.py`` from git (default: ``main``, and
``3cf5738``, the evaluator before batching) next to the working tree's, runs them in turns
(interleaved, so machine load hits every version alike) on the held-out images (labels.csv rows
600 onwards) through the fp16 and the W8A8 package of the coarse8 fine-tune, and records:

- CPU seconds per image of each version (process time, one thread, batches as the CoreML runner
  passes them; a version older than batching gets one image at a time);
- whether every version's logits equal the working tree's bit for bit, on every image.

Records the CPU model and the load average.  Writes ``benchmarks/results/mil_eval_speed.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from shared_data import SHARED_DATA, cpu_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "mil_eval_speed.json"
PROGRAMS = {"fp16": "spnasnet_100_fp16.mlpackage", "W8A8": "spnasnet_100_int8.mlpackage"}


def load_version(ref: str, work: Path):
    """``spnas/mil_eval.py`` as of git ``ref``, imported under its own module name."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:spnas/mil_eval.py"], check=True,
                            capture_output=True, text=True).stdout
    path = work / f"mil_eval_{ref.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def logits(program, inputs: np.ndarray, batch: int) -> np.ndarray:
    if not getattr(program, "per_image", False):
        batch = 1
    if "outputs" in program.run.__code__.co_varnames:
        run = lambda chunk: program.run({"input": chunk}, ["logits"])["logits"]  # noqa: E731
    else:  # before batching: every output, one image
        run = lambda chunk: program.run({"input": chunk})["logits"]  # noqa: E731
    return np.concatenate([run(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baselines", default="main,3cf5738", help="git refs to compare (default main,3cf5738)")
    parser.add_argument("--images", type=int, default=32, help="held-out images per turn (default 32)")
    parser.add_argument("--turns", type=int, default=3, help="interleaved turns per version (default 3)")
    parser.add_argument("--batch", type=int, default=16, help="images per run() call (the runner's MIL_BATCH)")
    parser.add_argument("--exports", metavar="DIR", help="the coarse8 .mlpackages in DIR instead of exporting")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from threadpoolctl import threadpool_limits

    import spnas.mil_eval as current
    from spnas.images import labelled_rows
    from spnas.preprocess import DEFAULT_SPEC, normalize

    inputs = normalize(labelled_rows(SHARED_DATA / "imagenet-sample" / "labels.csv", 600, 600 + args.images).pixels,
                       DEFAULT_SPEC, "NCHW")
    with tempfile.TemporaryDirectory(prefix="spnas-mil-speed-") as work:
        work = Path(work)
        folder = Path(args.exports) if args.exports else work / "coreml"
        if not args.exports:
            subprocess.run([sys.executable, "-m", "spnas.cli.export", "--format", "coreml", "--int8", "--weights",
                            str(SHARED_DATA / "spnasnet_100_coarse8"), "--calib", str(SHARED_DATA / "imagenet-sample"),
                            "--num-calib", "64", "--num-parity", "16", "--out", str(folder), "--quiet"], check=True,
                           stdout=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        versions = {"working tree": current, **{ref: load_version(ref, work) for ref in args.baselines.split(",")}}
        load_before = os.getloadavg()
        programs = {}
        for name, file in PROGRAMS.items():
            entry = {}
            loaded = {version: module.MilProgram(folder / file) for version, module in versions.items()}
            with threadpool_limits(1, "blas"):
                reference = logits(loaded["working tree"], inputs, args.batch)
                seconds = dict.fromkeys(loaded, 0.0)
                equal = {}
                for turn in range(args.turns):
                    for version, program in loaded.items():
                        start = time.process_time()
                        out = logits(program, inputs, args.batch)
                        seconds[version] += time.process_time() - start
                        if turn == 0:
                            equal[version] = bool(np.array_equal(out.view(np.uint16), reference.view(np.uint16)))
            per_image = {version: s / (args.turns * len(inputs)) for version, s in seconds.items()}
            for version in loaded:
                entry[version] = {"cpu_ms_per_image": round(1000 * per_image[version], 1),
                                  "logits_bit_equal_to_working_tree": equal[version]}
                if version != "working tree":
                    entry[version]["working_tree_speedup"] = round(per_image[version] / per_image["working tree"], 2)
            programs[name] = entry
            print(name, json.dumps(entry), file=sys.stderr, flush=True)
    document = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_before": load_before,
                            "load_average_after": os.getloadavg(),
                            "note": "process CPU time, versions interleaved turn by turn on a machine shared with "
                                    "other jobs: compare the ratios of one run"},
                "images": len(inputs), "turns": args.turns, "batch": args.batch, "programs": programs}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
