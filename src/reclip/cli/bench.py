"""``reclip bench``: flags -> cells -> ``reclip.bench.Bench(out).run(cells)`` -> a table."""
from __future__ import annotations

import argparse

from .. import distributed
from ..bench import DEFAULT_METHODS, METHODS, OFFLINE_SAMPLES, Bench, make_cells, offline_suite, paper_suite
from ..callbacks import PrintProgress
from ..errors import ReclipError
from .common import sigterm_as_interrupt


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="every label-free method side by side on many targets",
                       description="Runs cells (sample x model x target x method) into --out: results.json, "
                                   "results.csv, intervals.json (paired bootstrap 95% intervals), results.md, "
                                   "results.png, and each cell's per-image predictions in cells/. Rerun the same "
                                   "command to continue an interrupted bench: finished cells are kept, the others "
                                   "run.")
    p.add_argument("--suite", choices=("offline", "paper"), default=None,
                   help="offline: the bridge and bridge-lite1 models on targets built from Fashion-MNIST test "
                        "images (corruptions, class subsets, long tail), 3 samples each; paper: the paper's 22 "
                        "benchmarks with ViT-L-14@openai")
    p.add_argument("--targets", nargs="+", default=None,
                   help="offline target names, benchmark names or dataset paths (default: the suite's)")
    p.add_argument("--models", nargs="+", default=None,
                   help="model specs, with @weights for open_clip tags (ViT-L-14@openai); default: the suite's")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                   help=f"default: {' '.join(DEFAULT_METHODS)} (offline) or zero-shot reclip (paper)")
    p.add_argument("--n", type=int, default=2000, help="images per target and sample (0: all; default 2000)")
    p.add_argument("--samples", type=int, default=None,
                   help=f"disjoint seeded image sets per target (default {OFFLINE_SAMPLES} for the offline suite, "
                        "else 1); corrupted targets stay paired with the clean images of the same sample")
    p.add_argument("--data-root", default=None,
                   help="benchmarks' folder (paper suite), or the Fashion-MNIST IDX folder (offline suite)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", required=True, help="output folder (rerun with the same one to resume)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.n < 0:
        raise ReclipError(f"--n must be 0 (all images) or more; got {args.n}")
    if args.samples is not None and args.samples < 1:
        raise ReclipError(f"--samples must be at least 1; got {args.samples}")
    samples = args.samples or (OFFLINE_SAMPLES if args.suite == "offline" else 1)
    if samples > 1 and args.n == 0:
        raise ReclipError("--samples above 1 needs --n (images per sample), not 0 (all images)")
    if args.suite is None and not (args.targets and args.models):
        raise ReclipError("pass --suite offline|paper, or --targets and --models (and optionally --methods)")
    if args.suite == "offline":
        cells = offline_suite(args.methods or DEFAULT_METHODS, samples=samples)
    elif args.suite == "paper":
        cells = paper_suite(args.methods or ("zero-shot", "reclip"), samples=samples)
    else:
        cells = make_cells(args.targets, args.models, args.methods or DEFAULT_METHODS, samples)
    if args.targets or args.models:  # hand-picked rows or models within a suite
        targets = args.targets or list(dict.fromkeys(c.target for c in cells))
        models = args.models or list(dict.fromkeys(c.model + (f"@{c.pretrained}" if c.pretrained else "")
                                                   for c in cells))
        cells = make_cells(targets, models, list(dict.fromkeys(c.method for c in cells)), samples)
    bench = Bench(args.out, n=args.n or None, data_root=args.data_root, seed=args.seed, device=args.device,
                  workers=args.workers, callbacks=[PrintProgress()])
    with sigterm_as_interrupt():
        bench.run(cells)
    if distributed.is_main():
        print((bench.out / "results.md").read_text())
        print(f"wrote {bench.out}/results.{{json,csv,md,png}} and intervals.json ({len(cells)} cells)")
