"""Atomic output files: every file is written to a temporary sibling, then renamed into place,
so an interrupted run never leaves a half-written file behind. Every output gets the usual
permissions (0666 less the umask), whatever library wrote it. Output folders are held by a
lock file, which also marks them as reclip's; outputs never replace an input of the run or a
file that reclip did not write."""
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


def umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # writers that replace the file (safetensors creates it 0600) lose the usual mode
        os.chmod(tmp, 0o666 & ~umask())
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
def output_folder(path: str | Path, outputs: Sequence[str] = (), inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Create ``path`` and hold it for one run: refuses a file, an unwritable folder, a folder
    another run is writing (a lock file), a folder inside one of ``inputs`` (a dataset folder),
    and a folder that reclip never held whose files would be replaced by ``outputs`` (names of
    the run's files); removes temporary files that a killed run left there. Checked before any
    work starts, so a bad folder fails in seconds."""
    import fcntl

    if not str(path).strip():
        raise ReclipError("the output folder is an empty path; pass a folder name (use '.' for the current folder)")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ReclipError(f"output folder {out} is a file; pass a folder for the outputs")
    for source in inputs:
        if Path(source).is_dir() and is_within(out, Path(source)):
            raise ReclipError(f"output folder {out} is inside the input folder {source}; its outputs would become "
                              "part of the input; pass a folder outside it")
        clash = next((name for name in outputs if same_file(out / name, source)), None)
        if clash is not None:
            raise ReclipError(f"output folder {out}: its {clash} is the input file {source}, which the run would "
                              "destroy; pass another output folder")
    foreign = [name for name in outputs if (out / name).exists()] if not (out / LOCK_FILE).exists() else []
    if foreign:
        raise ReclipError(f"output folder {out} holds {foreign[0]}, which reclip did not write (the folder has "
                          "never held a reclip run); pass a new or empty folder")
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


def remove_stale(folder: Path, names: Sequence[str], written: Sequence[Path]) -> None:
    """Delete the files ``names`` in ``folder`` that this run did not write: an earlier run's
    outputs (an adapter left beside a later zero-shot run's metrics) would mix two runs."""
    kept = {Path(p).name for p in written}
    for name in names:
        if name not in kept:
            (folder / name).unlink(missing_ok=True)


def is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` (existing or not) is ``folder`` or lies below it, links resolved."""
    inner, outer = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return inner == outer or outer in inner.parents


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths exist and are one file (links and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(outputs: Sequence[tuple[str, Path]], inputs: Sequence[tuple[str, str | Path]]) -> None:
    """Refuse an output path (``(what, path)``) that is one of the ``inputs`` (``(what, path)``:
    files, or folders that the output would land inside), or that two outputs share."""
    for i, (what, out) in enumerate(outputs):
        for other_what, other in outputs[:i]:
            if os.path.realpath(out) == os.path.realpath(other):
                raise ReclipError(f"{what} {out} is also the {other_what}; give them different names")
        for source_what, source in inputs:
            if same_file(out, source) or (Path(source).is_dir() and is_within(out, Path(source))):
                relation = "is" if same_file(out, source) else "is inside"
                raise ReclipError(f"{what} {out} {relation} the {source_what} {source}, which it would destroy; "
                                  "pass another output path")
