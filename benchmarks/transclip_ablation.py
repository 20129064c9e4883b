"""The published TransCLIP's settings, one changed at a time, on the dev targets (TRAIN split).

    python benchmarks/transclip_ablation.py [--model bridge] [--targets ...] [--n 2000]

For every dev target (Fashion-MNIST TRAIN split, 2,000 images, features through the cache)
it runs ``reclip.transclip`` as published (y from the first template, T = 50, k = 3,
lambda = 1, 10 mean/variance updates) and with one setting changed at a time, including the
two changes that made our earlier variant differ (no temperature: T = 1; y from the
template ensemble), and writes the top-1 of each to
benchmarks/results/transclip_ablation.json. Labels only score. Dev targets only: the offline
suite (TEST split) is never used to study or choose settings.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reclip import load_model, transclip
from reclip.bench import DEV_TARGETS, OFFLINE_DEFAULT_N, load_target
from reclip.features import extract_features
from reclip.io import write_json
from reclip.method.run import resolve_templates
from reclip.method.zeroshot import ensemble_classifiers

RESULTS = Path(__file__).parent / "results" / "transclip_ablation.json"
VARIANTS: dict[str, dict] = {
    "published (k=3, lambda=1, T=50, first template)": {},
    "y from the template ensemble": {"ensemble": True},
    "T=1 (no temperature)": {"entropy_weight": 1.0},
    "lambda=0.5": {"lambda_": 0.5},
    "lambda=2": {"lambda_": 2.0},
    "k=10": {"k": 10},
    "iterations=1": {"iterations": 1},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bridge")
    p.add_argument("--targets", nargs="+", default=list(DEV_TARGETS))
    p.add_argument("--n", type=int, default=OFFLINE_DEFAULT_N)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if not all(t.startswith("train-") for t in args.targets):
        p.error("dev targets only (train-...): the offline suite is for reporting, never for studying settings")
    model = load_model(args.model)
    table: dict[str, dict[str, float]] = {}
    for name in args.targets:
        dataset = load_target(name, None, args.n, 0)
        dataset.transform = model.preprocess
        frozen = extract_features(model, dataset)
        with torch.inference_mode():
            ensemble, first = ensemble_classifiers(model, dataset.classnames, resolve_templates(dataset, None, None))
        known = frozen.labels >= 0
        top1 = lambda pred: round(100 * float((pred == frozen.labels)[known].float().mean()), 2)  # noqa: E731
        feats = frozen.features.float()
        row = {"zero-shot (ensemble)": top1((feats @ ensemble.float().T).argmax(-1)),
               "zero-shot (first template)": top1((feats @ first.float().T).argmax(-1))}
        for variant, options in VARIANTS.items():
            options = dict(options)
            classifier = ensemble if options.pop("ensemble", False) else first
            row[variant] = top1(transclip(feats, classifier=classifier.float(), **options).labels)
        table[name] = row
        print(name, row, flush=True)
    means = {v: round(sum(r[v] for r in table.values()) / len(table), 2) for v in next(iter(table.values()))}
    write_json(args.out, {"n": args.n, "model": args.model, "split": "train", "top1": table, "mean": means})
    print("mean", means)


if __name__ == "__main__":
    main()
