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
    p.add_argument("--cells", nargs="+", metavar="TARGET:SEED",
                   help="run exactly these (target, seed) samples instead of every target x seed")
    p.add_argument("--out", type=Path, default=out)
    return p


def parse_dev_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments, with ``cells``: the (target, seed) pairs of ``--cells``, else every
    (target, seed) pair, seed-major; exits with a usage error when a target is not a dev target
    (``train-*``) or a cell is not ``TARGET:SEED``."""
    args = p.parse_args()
    if args.cells:
        try:
            args.cells = [(target, int(seed)) for target, seed in (cell.rsplit(":", 1) for cell in args.cells)]
        except ValueError:
            p.error("--cells takes TARGET:SEED pairs, e.g. train-clean:0")
    else:
        args.cells = [(target, seed) for seed in args.seeds for target in args.targets]
    if any(not target.startswith("train-") for target, _ in args.cells):
        p.error("use dev targets only (names starting with train-)")
    return args
