"""The ``reclip`` command line: ``reclip {zeroshot,adapt,predict,report,demo,bench} ...``."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from .. import __version__, distributed, progress
from ..errors import ArgumentError, ReclipError
from .common import flag


def build_parser() -> argparse.ArgumentParser:
    from . import adapt, bench, demo, predict, report, zeroshot

    parser = argparse.ArgumentParser(
        prog="reclip", description="Adapt CLIP-style models to unlabelled target images (ReCLIP).")
    parser.add_argument("--version", action="version", version=f"reclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or lines and no per-epoch lines; only results and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (zeroshot, adapt, predict, report, demo, bench):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    progress.set_quiet(args.quiet)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        # under torchrun: join the process group (NCCL on CUDA, gloo on CPU) and pick this rank's GPU
        if hasattr(args, "device"):
            args.device = distributed.init(args.device)
        args.func(args)
    except ArgumentError as exc:  # a library argument or setting: shown as its flag
        how = flag(exc.param) if exc.example is None else f"{flag(exc.param)} {exc.example}"
        print(f"reclip: error: {exc.render(how)}", file=sys.stderr)
        return 2
    except ReclipError as exc:
        print(f"reclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reclip: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
