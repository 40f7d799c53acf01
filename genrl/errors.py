"""User-facing errors: one line that names the problem and the fix, shown without a traceback."""


class GenrlError(Exception):
    """A mistake in the user's input or environment. ``python -m genrl.train`` prints it and exits with 2."""
