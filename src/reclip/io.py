"""Atomic output files: every file is written to a temporary sibling, then renamed into place,
so an interrupted run never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def write_predictions(path: str | Path, indices: torch.Tensor, probs: torch.Tensor,
                      classnames: list[list[str]], paths: Sequence[str] | None) -> None:
    """``index,path,pred,pred_name,confidence`` for each scored image (N rows of N x C
    class probabilities); the confidence is the probability of the predicted class."""
    conf, pred = probs.float().max(dim=-1)
    rows = [
        (int(i), paths[int(i)] if paths else "", int(p), classnames[int(p)][0], f"{float(c):.6f}")
        for i, p, c in zip(indices.tolist(), pred.tolist(), conf.tolist())
    ]
    write_csv(path, ("index", "path", "pred", "pred_name", "confidence"), rows)
