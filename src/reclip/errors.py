"""User-facing errors.

A ``ReclipError`` is a mistake the user can fix (a wrong path, an unknown model, a
class-count mismatch). The CLI prints its message on one line and exits with code 2,
without a traceback. Anything else is a bug and keeps its traceback.
"""


class ReclipError(Exception):
    """An error caused by user input; its message says what went wrong and how to fix it."""


class ArgumentError(ReclipError):
    """A bad value for one argument of a public function or constructor; ``param`` names it
    (the command line shows it as its flag)."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param} {problem}")
        self.param = param
        self.problem = problem
