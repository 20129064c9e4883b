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
from typing import TypeVar

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


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "batches") -> Iterator[T]:
    """Iterate ``iterable`` while reporting how far it got (see the module docstring);
    ``unit`` names what it yields, in the plural."""
    if _quiet or not distributed.is_main():
        return iter(iterable)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _interactive():
        bar_class = auto_tqdm if "ipykernel" in sys.modules else tqdm
        return iter(bar_class(iterable, desc=desc, total=total, unit=unit, leave=False))
    return _lines(iterable, desc, total, unit)


def _lines(iterable: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
    start = last = time.monotonic()
    last_fraction, done, printed = 0.0, 0, False
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        fraction = done / total if total else 0.0
        if now - last >= LINE_EVERY_S or (now - last >= MIN_GAP_S and fraction - last_fraction >= LINE_EVERY_FRACTION):
            _say(line(desc, done, total, unit, now - start))
            last, last_fraction, printed = now, fraction, True
    elapsed = time.monotonic() - start
    if printed or elapsed >= MIN_GAP_S:
        _say(line(desc, done, total, unit, elapsed, finished=True))


def line(desc: str, done: int, total: int | None, unit: str, elapsed: float, finished: bool = False) -> str:
    """``features cifar10: 120/313 batches (38%), 41 s, about 66 s left`` (``... done in 107 s`` at the end)."""
    count = f"{done}/{total} {unit}" if total else f"{done} {unit}"
    if finished:
        return f"{desc}: {count} done in {elapsed:.0f} s"
    text = f"{desc}: {count}"
    if total:
        text += f" ({100 * done / total:.0f}%), {elapsed:.0f} s"
        if done:
            text += f", about {elapsed * (total - done) / done:.0f} s left"
    else:
        text += f", {elapsed:.0f} s"
    return text


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
