"""Where every benchmark finds the shared data (``$SPNAS_SHARED_DATA``, else ``../shared/data``
next to the repository, as the tests do in ``tests/conftest.py``), the fidelity protocol
the per-format studies measure on it, and the CPU model every benchmark records."""

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("SPNAS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def cpu_model(default: str = "unknown") -> str:
    """The ``model name`` of /proc/cpuinfo (what ``lscpu`` prints), else ``default``."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return default


def fixture_protocol(shared: Path = SHARED_DATA):
    """``(model, calib, held_out, reference)``: the fixture-weight model, the protocol's
    calibration and evaluation pixels (labels.csv rows 0-127 and 600-799) and the PyTorch
    reference logits of the evaluation pixels."""
    import spnas
    from spnas.images import fidelity_protocol
    from spnas.reference import TorchRunner

    calib, held_out = (images.pixels for images in fidelity_protocol(shared / "imagenet-sample" / "labels.csv"))
    model = spnas.create_model(str(shared / "spnasnet_100_fixture.safetensors"))
    return model, calib, held_out, TorchRunner(model).run(held_out)
