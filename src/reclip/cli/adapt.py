"""``reclip adapt``: flags -> ``ReclipConfig`` -> ``ReCLIP(model, config).fit(...)`` -> a table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import checks, distributed
from ..callbacks import PrintProgress
from ..method.checkpoint import CHECKPOINT
from ..method.run import ReCLIP
from .common import (add_data_options, add_method_options, add_model_options, config_from_args, load_inputs,
                     print_table, safeguard_line, sigterm_as_interrupt)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt a model to unlabelled target images (ReCLIP)",
                       description="ReCLIP source-free adaptation. Writes metrics.json, predictions.csv, "
                                   "adapter.safetensors, report.html, report.png and checkpoint/ to --out.")
    add_model_options(p)
    add_data_options(p)
    add_method_options(p)
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = config_from_args(args)  # option errors first, before any model is loaded
    checks.path_argument(args.out, "out")
    model, dataset, templates = load_inputs(args)
    try:
        with sigterm_as_interrupt():
            result = ReCLIP(model, config).fit(dataset, templates, out=args.out, resume=args.resume,
                                               callbacks=[PrintProgress()])
    except KeyboardInterrupt:
        checkpoint = Path(args.out) / CHECKPOINT
        hint = (f"continue with the same command plus --resume (checkpoint: {checkpoint})" if checkpoint.is_file()
                else "no epoch had finished, so there is nothing to resume")
        print(f"reclip: stopped; outputs so far are complete; {hint}", file=sys.stderr)
        raise SystemExit(130) from None
    if distributed.is_main():
        m = result.metrics
        print_table([("zero-shot", m["zero_shot"]), (config.mode, m["final"])])
        if (line := safeguard_line(m)) is not None:
            print(line)
        print(f"wrote {args.out} ({m['n']} images, {m['skipped']} skipped) in {m['seconds']:.1f} s; "
              f"report: {Path(args.out) / 'report.html'}")
