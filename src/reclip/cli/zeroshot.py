"""``reclip zeroshot``: the prompt-ensemble zero-shot baseline (``ReCLIP`` in mode zero-shot)."""
from __future__ import annotations

import argparse

from .. import distributed
from ..method.run import ReCLIP
from .common import add_data_options, add_model_options, config_from_args, load_inputs, print_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot classification of a dataset (the baseline)",
                       description="Prompt-ensemble zero-shot classification; writes metrics.json, "
                                   "predictions.csv and report.html to --out.")
    add_model_options(p)
    add_data_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    config = config_from_args(args, mode="zero-shot")
    model, dataset, templates = load_inputs(args)
    result = ReCLIP(model, config).fit(dataset, templates, out=args.out)
    if distributed.is_main():
        m = result.metrics
        print(f"{model.name} on {dataset.name}: {m['n']} images ({m['skipped']} skipped), {m['seconds']:.1f} s")
        print_table([("zero-shot", m["final"])])
        print(f"wrote {args.out}/metrics.json, predictions.csv and report.html")
