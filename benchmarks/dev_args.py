"""Command-line arguments shared by the scripts that choose defaults on the dev targets."""
from __future__ import annotations

import argparse
from pathlib import Path

from reclip.data.targets import DEV_TARGETS, HARD_DEV_TARGETS


def dev_parser(doc: str, out: Path) -> argparse.ArgumentParser:
    """A parser with ``--targets`` (default DEV_TARGETS + HARD_DEV_TARGETS), ``--n`` (500),
    ``--seed`` (0) and ``--out`` (``out``); add a script's own options, then call :func:`parse_dev_args`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=list(DEV_TARGETS + HARD_DEV_TARGETS))
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=out)
    return p


def parse_dev_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments; exits with a usage error when a target is not a dev target (``train-*``)."""
    args = p.parse_args()
    if any(not t.startswith("train-") for t in args.targets):
        p.error("use dev targets only (names starting with train-)")
    return args
