"""Progress of long steps, wherever the output goes.

``progress(iterable, desc)`` wraps a loop: on a terminal (or in a notebook) it is a tqdm bar,
as before; without one (a script's log, a batch job, ``reclip demo > log 2>&1``) it writes a
plain line to stderr every ``LINE_EVERY_S`` seconds or every ``LINE_EVERY_FRACTION`` of the
work, whichever comes first (but never more often than ``MIN_GAP_S``), and one when the step
ends; ``set_quiet(True)`` (the CLI's ``--quiet``) silences both. Only the main process
reports under torchrun.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

from . import distributed

T = TypeVar("T")

LINE_EVERY_S = 10.0
LINE_EVERY_FRACTION = 0.1
MIN_GAP_S = 2.0  # a fast step does not print ten lines

_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Silence (or restore) every progress bar and line of this process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def _interactive() -> bool:
    """A terminal on stderr, or a Jupyter kernel (tqdm.auto draws a widget there)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class progress(Generic[T]):  # noqa: N801 - used like a function, as tqdm is
    """Iterate ``iterable`` while reporting how far it got (see the module docstring);
    ``unit`` names what it yields, in the plural. ``set_postfix(name=value, ...)`` adds
    running values to the bar or the next line."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "batches") -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None or not hasattr(iterable, "__len__") else len(iterable)  # type: ignore[arg-type]
        self.postfix: dict[str, Any] = {}
        self.bar: tqdm | None = None
        self.silent = _quiet or not distributed.is_main()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(values)

    def __iter__(self) -> Iterator[T]:
        if self.silent:
            return iter(self.iterable)
        if _interactive():
            bar_class = auto_tqdm if "ipykernel" in sys.modules else tqdm
            self.bar = bar_class(self.iterable, desc=self.desc, total=self.total, unit=self.unit, leave=False)
            return iter(self.bar)
        return self._lines()

    def _lines(self) -> Iterator[T]:
        start = last = time.monotonic()
        last_fraction, done, printed = 0.0, 0, False
        for item in self.iterable:
            yield item
            done += 1
            now = time.monotonic()
            fraction = done / self.total if self.total else 0.0
            due = now - last >= LINE_EVERY_S or (now - last >= MIN_GAP_S
                                                 and fraction - last_fraction >= LINE_EVERY_FRACTION)
            if due and done != self.total:  # the closing line reports the last item
                _say(line(self.desc, done, self.total, self.unit, now - start, self.postfix))
                last, last_fraction, printed = now, fraction, True
        elapsed = time.monotonic() - start
        if printed or elapsed >= MIN_GAP_S:
            _say(line(self.desc, done, self.total, self.unit, elapsed, self.postfix, finished=True))


def line(desc: str, done: int, total: int | None, unit: str, elapsed: float, postfix: dict[str, Any] | None = None,
         finished: bool = False) -> str:
    """``features cifar10: 120/313 batches (38%), 41 s, about 66 s left`` (``... done in 107 s``
    at the end), then the postfix values (``, loss 0.41``)."""
    count = f"{done}/{total} {unit}" if total else f"{done} {unit}"
    if finished:
        text = f"{desc}: {count} done in {elapsed:.0f} s"
    elif total:
        text = f"{desc}: {count} ({100 * done / total:.0f}%), {elapsed:.0f} s"
        if done:
            text += f", about {elapsed * (total - done) / done:.0f} s left"
    else:
        text = f"{desc}: {count}, {elapsed:.0f} s"
    return text + "".join(f", {k} {v}" for k, v in (postfix or {}).items())


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
