"""The one exception type the CLIs turn into a one-line message and exit code 2."""


class SpnasError(Exception):
    """A user-facing error: bad input, missing file, unusable checkpoint."""
