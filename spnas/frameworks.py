"""Importing a heavy framework without the optional parts of it spnas never uses.

A framework that finds another one installed imports it for converters or wrappers spnas never calls:
coremltools pulls TensorFlow, ExecuTorch's ``exir``, torchao and scikit-learn (~10 s together), and
TensorFlow's keras pulls scikit-learn (~1 s) for its estimator wrappers.  Each is hidden during that one
import, if nobody has imported it yet, so a later import of it still works.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType


def import_hiding(module: str, hidden: tuple[str, ...]) -> ModuleType:
    """``import module`` with the not-yet-imported modules of ``hidden`` unimportable meanwhile."""
    if module in sys.modules:
        return sys.modules[module]
    absent = [name for name in hidden if name not in sys.modules]
    for name in absent:
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        __import__(module)
    finally:
        for name in absent:
            del sys.modules[name]
    return sys.modules[module]


@functools.cache
def import_tensorflow() -> ModuleType:
    """TensorFlow without scikit-learn (keras' estimator wrappers), its Python logger set to ERROR once: the TF
    graph builders call this at every op, and ``setLevel`` walks every logger of the process."""
    tf = import_hiding("tensorflow", ("sklearn",))
    tf.get_logger().setLevel("ERROR")
    return tf
