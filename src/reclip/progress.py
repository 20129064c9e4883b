"""Progress of long steps, wherever the output goes.

``progress(iterable, desc)`` wraps a loop: on a terminal (or in a notebook) it is a tqdm bar,
as before; without one (a script's log, a batch job, ``reclip demo > log 2>&1``) it writes a
plain line to stderr every ``LINE_EVERY_S`` seconds or every tenth of the work, whichever
comes first (never more often than ``MIN_GAP_S``; a heartbeat thread keeps the pace while
one item takes long), and one when the step ends. ``heartbeat(desc)`` covers longer stretches
whose steps do not all report. ``set_quiet(True)`` (the CLI's ``--quiet``) silences all of
it. Only the main process reports under torchrun.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

from . import distributed

T = TypeVar("T")

LINE_EVERY_S = 10.0
MIN_GAP_S = 2.0  # a fast step does not print ten lines
HEARTBEAT_S: float | None = 1.0  # how often the heartbeat thread looks at the clock (None: no thread)

_quiet = False
_clock = time.monotonic  # seconds; tests replace it with a fake clock
_last_line = _clock()  # when the last progress line was written (or this module was imported)
_active_loops = 0  # progress loops now reporting with lines (a heartbeat leaves the talking to them)


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
        global _active_loops
        reporter = _LineReporter(self)
        _active_loops += 1
        try:
            for item in self.iterable:
                yield item
                reporter.advance()
        finally:
            _active_loops -= 1
            reporter.stop()


class _LineReporter:
    """Plain lines for one ``progress`` loop. A heartbeat thread also reports while one item
    takes long (a slow batch on a busy machine), so lines come at a steady pace."""

    def __init__(self, owner: progress) -> None:
        self.owner = owner
        self.start = self.last = _clock()
        self.done, self.last_tenth, self.printed = 0, 0, False
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = None
        if HEARTBEAT_S:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()

    def _say(self, now: float, finished: bool = False) -> None:
        o = self.owner
        _say(line(o.desc, self.done, o.total, o.unit, now - self.start, o.postfix, finished=finished))
        self.last, self.printed = now, True

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            now = _clock()
            total = self.owner.total
            tenth = self.done * 10 // total if total else 0
            # 10 s since any line (this loop's or another step's), or a tenth more done
            due = now - _last_line >= LINE_EVERY_S or (now - self.last >= MIN_GAP_S and tenth > self.last_tenth)
            if due and self.done != total:  # the closing line reports the last item
                self._say(now)
                self.last_tenth = tenth

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            with self.lock:
                now = _clock()
                if now - _last_line >= LINE_EVERY_S and not self.stopped.is_set():
                    self._say(now)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        with self.lock:
            now = _clock()
            if self.printed or now - self.start >= MIN_GAP_S:
                self._say(now, finished=True)


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


@contextlib.contextmanager
def heartbeat(desc: str) -> Iterator[None]:
    """Around a long stretch of work whose steps do not all report (label propagation, model
    loading): without a terminal, a ``desc: working, 25 s`` line whenever no progress line
    was written for ``LINE_EVERY_S`` seconds (counted across steps: the silence before the
    block counts too) and no ``progress`` loop is reporting. Quiet on a terminal, under ``set_quiet`` and
    off the main process."""
    if _quiet or not distributed.is_main() or _interactive() or not HEARTBEAT_S:
        yield
        return
    start = _clock()
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.wait(HEARTBEAT_S):
            now = _clock()
            if not _active_loops and now - _last_line >= LINE_EVERY_S:
                _say(f"{desc}: working, {now - start:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


def _say(text: str) -> None:
    global _last_line
    print(text, file=sys.stderr, flush=True)
    _last_line = _clock()
