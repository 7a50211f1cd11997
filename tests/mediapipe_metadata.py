"""MediaPipe's own metadata displayer, importable despite the mediapipe 1.2.2 wheel's missing extension.

``mediapipe.tasks.python.metadata.metadata`` imports ``mediapipe.tasks.cc.metadata.python.
_pywrap_metadata_version`` at module level, but the wheel does not ship it.  Only
``MetadataPopulator.load_metadata_buffer`` calls it; the displayer (flatbuffer to JSON through
MediaPipe's C flatbuffer parser, associated files from the zip) never does.  So empty stand-in
modules are registered for the import alone, and any call into them would fail loudly.
"""

from __future__ import annotations

import sys
import types

MISSING_MODULES = ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python",
                   "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version")


def metadata_module():
    for name in MISSING_MODULES:
        sys.modules.setdefault(name, types.ModuleType(name))
    from mediapipe.tasks.python.metadata import metadata

    return metadata


def displayer(path):
    """``MetadataDisplayer`` of a model file."""
    return metadata_module().MetadataDisplayer.with_model_file(str(path))
