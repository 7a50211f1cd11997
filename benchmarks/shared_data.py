"""Where every benchmark finds the shared data: ``$SPNAS_SHARED_DATA``, else ``../shared/data``
next to the repository, as the tests do (``tests/conftest.py``)."""

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("SPNAS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
