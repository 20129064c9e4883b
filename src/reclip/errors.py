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
    """A ``ReclipError`` fixed by passing ``param``; ``template`` holds ``{arg}`` where the
    parameter and its ``example`` value go."""

    def __init__(self, template: str, param: str, example: str) -> None:
        self.template, self.param, self.example = template, param, example
        super().__init__(self.render(f"{param}={example!r}"))

    def render(self, how: str) -> str:
        """The message with ``how`` (e.g. ``--pretrained /path/to/weights``) in place of ``{arg}``."""
        return self.template.replace(ARG, how)
