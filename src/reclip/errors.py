"""User-facing errors.

A ``ReclipError`` is a mistake the user can fix (a wrong path, an unknown model, a
class-count mismatch). The CLI prints its message on one line and exits with code 2,
without a traceback. Anything else is a bug and keeps its traceback.

An ``ArgumentError`` is a ``ReclipError`` whose fix is to pass one parameter: its message
names it the way the caller passes it, ``pretrained='/path/to/weights'`` from Python
(``str(exc)``) and ``--pretrained /path/to/weights`` on the command line (``exc.render``).
"""
from __future__ import annotations

ARG = "{arg}"  # where an ArgumentError's template names the parameter and its example value


class ReclipError(Exception):
    """An error caused by user input; its message says what went wrong and how to fix it."""


class ArgumentError(ReclipError):
    """A ``ReclipError`` fixed by passing another value of one parameter, ``param``.

    ``problem`` says what is wrong. Where it holds ``{arg}``, the way the caller passes the
    parameter goes there: ``param='example'`` from Python (``str(exc)``), ``--flag example`` on
    the command line (``render``); otherwise the message starts with the parameter's name."""

    def __init__(self, param: str, problem: str, example: str | None = None) -> None:
        self.param, self.problem, self.example = param, problem, example
        super().__init__(self.render(param if example is None else f"{param}={example!r}"))

    def render(self, how: str) -> str:
        """The message with ``how`` (``--pretrained /path/to/weights``, or a flag alone) naming the parameter."""
        return self.problem.replace(ARG, how) if ARG in self.problem else f"{how} {self.problem}"
