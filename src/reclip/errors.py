"""User-facing errors.

A ``ReclipError`` is a mistake the user can fix (a wrong path, an unknown model, a
class-count mismatch). The CLI prints its message on one line and exits with code 2,
without a traceback. Anything else is a bug and keeps its traceback.
"""


class ReclipError(Exception):
    """An error caused by user input; its message says what went wrong and how to fix it."""
