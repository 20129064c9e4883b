"""Command-line arguments shared by the scripts that choose defaults on the dev targets."""
from __future__ import annotations

import argparse
from pathlib import Path

from reclip.bench import DEV_TARGETS, HARD_DEV_TARGETS


def dev_parser(doc: str, out: Path) -> argparse.ArgumentParser:
    """A parser with ``--targets`` (default DEV_TARGETS + HARD_DEV_TARGETS), ``--n`` (2000, the offline
    suite's size), ``--seeds`` (0; each seed draws an independent sample of every target) and ``--out``
    (``out``); add a script's own options, then call :func:`parse_dev_args`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=list(DEV_TARGETS + HARD_DEV_TARGETS))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=out)
    return p


def parse_dev_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments, with ``cells``: every (target, seed) pair, seed-major; exits with a usage
    error when a target is not a dev target (``train-*``)."""
    args = p.parse_args()
    if any(not t.startswith("train-") for t in args.targets):
        p.error("use dev targets only (names starting with train-)")
    args.cells = [(target, seed) for seed in args.seeds for target in args.targets]
    return args
