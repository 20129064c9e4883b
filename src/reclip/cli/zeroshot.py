"""``reclip zeroshot``: the prompt-ensemble zero-shot baseline on a dataset."""
from __future__ import annotations

import argparse
import time

import torch

from .. import distributed
from ..errors import ReclipError
from ..features import Features, extract_features
from ..io import write_json, write_predictions
from ..method.zeroshot import class_embeddings, zero_shot_logits
from ..metrics import classification_metrics
from .common import Setup, add_data_options, add_model_options, load_setup, out_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot classification of a dataset (the baseline)",
                       description="Prompt-ensemble zero-shot classification; writes metrics.json "
                                   "and predictions.csv to --out.")
    add_model_options(p)
    add_data_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def zero_shot(setup: Setup, args: argparse.Namespace) -> tuple[Features, torch.Tensor, torch.Tensor]:
    """Frozen image features, the C x D text classifier and N x C zero-shot logits."""
    feats = extract_features(setup.model, setup.dataset, batch_size=args.batch_size,
                             workers=args.workers, use_cache=not args.no_cache)
    if len(feats.indices) == 0:
        raise ReclipError(f"no readable image in {setup.dataset.spec}; every file failed to decode")
    with torch.inference_mode():
        classifier = class_embeddings(setup.model, setup.dataset.classnames, setup.templates).cpu()
    return feats, classifier, zero_shot_logits(feats.features, classifier)


def describe(setup: Setup, feats: Features) -> dict:
    return {"model": setup.model.spec, "pretrained": setup.model.pretrained,
            "dataset": setup.dataset.spec, "n": len(feats.indices), "skipped": len(feats.skipped),
            "world_size": distributed.world()}


def print_table(rows: list[tuple[str, dict]]) -> None:
    """One line per method: top-1, top-5, mean per-class recall, ECE (when labels exist)."""
    keys = ("top1", "top5", "mean_per_class_recall", "ece")
    print(f"{'method':<14}" + "".join(f"{k:>24}" for k in keys))
    for name, m in rows:
        print(f"{name:<14}" + "".join(f"{m[k]:>24.4f}" if k in m else f"{'-':>24}" for k in keys))


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = out_dir(args.out)
    setup = load_setup(args)
    feats, _, logits = zero_shot(setup, args)
    metrics = {"task": "zeroshot", **describe(setup, feats),
               **classification_metrics(logits.softmax(dim=-1), feats.labels),
               "seconds": round(time.perf_counter() - start, 3),
               "images_per_s": round(len(feats.indices) / feats.seconds, 1) if feats.seconds else None}
    if not distributed.is_main():
        return
    write_predictions(out / "predictions.csv", feats.indices, logits.softmax(dim=-1), setup.dataset.classnames,
                      setup.dataset.paths)
    write_json(out / "metrics.json", metrics)
    print(f"{setup.model.name} on {setup.dataset.name}: {metrics['n']} images "
          f"({metrics['skipped']} skipped), {metrics['seconds']:.1f} s")
    print_table([("zero-shot", metrics)])
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.csv'}")
