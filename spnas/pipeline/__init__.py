"""The export and the verification as library code: typed requests in, a typed ``Report`` out.

The CLIs parse flags into these requests and print the report; ``spnas.load(...).export(...)`` and
``spnas.verify(...)`` build the same requests from keywords.  Nothing here parses a command line.
"""

from spnas.pipeline.export import RandomWeightsRefused, run_export
from spnas.pipeline.requests import ExportRequest, VerifyRequest
from spnas.pipeline.verify import run_verify

__all__ = ["ExportRequest", "RandomWeightsRefused", "VerifyRequest", "run_export", "run_verify"]
