"""LiteRT's GPU delegate: TF's model analyzer with ``gpu_compatibility=True``, per op.

``tf.lite.experimental.Analyzer.analyze`` prints the graph (``Op#N NAME(...)``), a ``GPU
COMPATIBILITY WARNING`` line under each op the delegate would refuse, and a closing sentence
("Your model looks compatible with GPU delegate ..." or the nodes with issues).  It prints, so
the text is captured at the file-descriptor level (its native part writes to fd 1 and 2
directly) and parsed; the warnings and the closing sentence are kept as its own words.
A refused op leaves the delegate, so each run of accepted ops between refused ones is one
partition, as the delegate would cut the graph.

The check is only as good as the build: TF 2.21's and LiteRT 2.3's wheels print "looks compatible"
for every model (their binaries carry no per-op GPU rule: a ``FlexCosh`` op, which no GPU delegate
runs, passes).  So each process first analyzes such a canary once; when the canary passes, every
verdict is "unchecked" with the reason, the analyzer's words kept.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
import tempfile
from pathlib import Path

from spnas.accelerators.schema import entry
from spnas.frameworks import import_tensorflow

OP_LINE = re.compile(r"^\s*Op#(\d+) (\w+)\(")
WARNING = "GPU COMPATIBILITY WARNING"


@contextlib.contextmanager
def captured_output():
    """Everything written to stdout and stderr inside the block, Python's and native code's alike."""
    buffer = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile("w+") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield buffer
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            buffer.write(sink.read())


def analyzer_text(path: str | Path) -> str:
    tf = import_tensorflow()

    with captured_output() as text:
        tf.lite.experimental.Analyzer.analyze(model_path=str(path), gpu_compatibility=True)
    return text.getvalue()


def parse(text: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """``[(op name, refusal or None)]`` in graph order, and the analyzer's GPU sentences."""
    ops: list[tuple[str, str | None]] = []
    words = []
    for line in text.splitlines():
        if match := OP_LINE.match(line):
            ops.append((match.group(2), None))
        elif WARNING in line:
            words.append(line.strip())
            reason = line.split(WARNING, 1)[1].lstrip(": ").strip()
            if ops and ops[-1][1] is None and not line.lstrip().startswith(WARNING + ": Subgraph"):
                ops[-1] = (ops[-1][0], reason)
        elif "GPU delegate" in line or "runtime incompatibil" in line:
            words.append(line.strip())
    return ops, words


@functools.cache
def canary_refused() -> bool:
    """Whether this build's analyzer refuses a Select-TF op (``FlexCosh``) that no GPU delegate runs."""
    tf = import_tensorflow()

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def canary(x):
        return tf.cosh(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([canary.get_concrete_function()], canary)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with captured_output(), tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "canary.tflite"
        path.write_bytes(converter.convert())
        ops, _ = parse(analyzer_text(path))
    return any(reason is not None for _, reason in ops)


def check_gpu(path: str | Path) -> dict:
    """The GPU delegate's entry of one ``.tflite``."""
    tf = import_tensorflow()

    ops, words = parse(analyzer_text(path))
    if not ops:
        raise RuntimeError(f"{path}: TF's model analyzer listed no op")
    refused = [(name, reason) for name, reason in ops if reason is not None]
    runs, previous = 0, False
    for _, reason in ops:
        accepted = reason is None
        runs += accepted and not previous
        previous = accepted
    unsupported = [{"op": name, "reason": reason} for name, reason in refused]
    result = entry(f"tf.lite.experimental.Analyzer (gpu_compatibility=True), TensorFlow {tf.__version__}",
                   len(ops), len(ops) - len(refused), runs, unsupported, words, canary_refused=canary_refused())
    if not result["canary_refused"]:
        result["verdict"] = "unchecked"
        result["messages"].append(f"spnas: TensorFlow {tf.__version__}'s analyzer also calls a FlexCosh canary "
                                  "compatible: its GPU check refuses nothing in this build")
    return result
