"""The TransCLIP-style method's text weight (lambda) and graph size (k) on the offline suite,
to set beside the TransCLIP paper's own claims (docs/method.md, "Label propagation").

    python benchmarks/transclip_ablation.py      # after `reclip bench --suite offline` (features cached): ~2 min

For every offline target (bridge model, 2,000 TEST images, features through the cache) it
runs ``reclip.transclip`` at the default settings and with one setting changed at a time, and
writes the top-1 of each to benchmarks/results/transclip_ablation.json. Labels only score.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reclip import load_model, transclip
from reclip.bench import OFFLINE_DEFAULT_N, load_target
from reclip.bench import OFFLINE_TARGETS
from reclip.features import extract_features
from reclip.io import write_json
from reclip.method.run import resolve_templates
from reclip.method.zeroshot import class_embeddings

RESULTS = Path(__file__).parent / "results" / "transclip_ablation.json"
VARIANTS: dict[str, dict] = {
    "default (k=3, lambda=1)": {},
    "lambda=0.1 (text weak)": {"lambda_": 0.1},
    "lambda=0.5": {"lambda_": 0.5},
    "lambda=2": {"lambda_": 2.0},
    "lambda=10 (text strong)": {"lambda_": 10.0},
    "k=10": {"k": 10},
    "iterations=1": {"iterations": 1},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=OFFLINE_DEFAULT_N)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    model = load_model("bridge")
    table: dict[str, dict[str, float]] = {}
    for name in OFFLINE_TARGETS:
        dataset = load_target(name, None, args.n, 0)
        dataset.transform = model.preprocess
        frozen = extract_features(model, dataset)
        with torch.inference_mode():
            classifier = class_embeddings(model, dataset.classnames, resolve_templates(dataset, None, None)).float()
        known = frozen.labels >= 0
        top1 = lambda pred: round(100 * float((pred == frozen.labels)[known].float().mean()), 2)  # noqa: E731
        row = {"zero-shot": top1((frozen.features.float() @ classifier.T).argmax(-1))}
        for variant, options in VARIANTS.items():
            row[variant] = top1(transclip(frozen.features.float(), classifier=classifier, **options).labels)
        table[name] = row
        print(name, row, flush=True)
    means = {v: round(sum(r[v] for r in table.values()) / len(table), 2) for v in next(iter(table.values()))}
    write_json(args.out, {"n": args.n, "model": "bridge", "top1": table, "mean": means})
    print("mean", means)


if __name__ == "__main__":
    main()
