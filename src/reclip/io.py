"""Atomic output files: every file is written to a temporary sibling, then renamed into place,
so an interrupted run never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import ReclipError


def temporary_sibling(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` next to ``path``, created with the usual
    permissions (0666 less the process umask)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files that ``atomic_path`` left in ``folder`` when a process was killed."""
    return sorted(folder.glob(".*.tmp"))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path)
    except OSError as exc:
        raise ReclipError(f"cannot write {path} ({exc.strerror}); pass a writable folder") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a folder made read-only meanwhile
        raise ReclipError(f"cannot write {path} ({exc.strerror}); free some space or pass another folder; "
                          "the previous version of the file, if any, is intact") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


LOCK_FILE = ".reclip.lock"


@contextlib.contextmanager
def output_folder(path: str | Path) -> Iterator[Path]:
    """Create ``path`` and hold it for one run: refuses a file, an unwritable folder and a
    folder another run is writing (a lock file), and removes temporary files that a killed
    run left there. Checked before any work starts, so a bad folder fails in seconds."""
    import fcntl

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ReclipError(f"output folder {out} is a file; pass a folder for the outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK_FILE, "a")
    except OSError as exc:
        raise ReclipError(f"cannot write to the output folder {out} ({exc.strerror}); pass a writable folder") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReclipError(f"another reclip run is writing to {out}; wait for it or pass another output "
                              "folder") from None
        for stale in stale_temporaries(out) + stale_temporaries(out / "checkpoint"):
            stale.unlink(missing_ok=True)
        yield out
