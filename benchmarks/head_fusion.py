"""Each head alone against their fusions, and label propagation's pseudo labels with and without
the class balance, on dev targets only (Fashion-MNIST TRAIN split; never the reported ones).

    python benchmarks/head_fusion.py --samples 2 --data-root /usr/share/datasets/fashion-mnist

For every dev target, sample (the bench's disjoint samples, so the feature cache is shared
with ``reclip bench``) and ``class_balance`` setting it runs reclip through the library with
``head_fusion="calibrated"`` and the safeguard off (so the adapted logits are always the
prediction), then scores by top-1 and per-class recall against the dev labels:

- ``t`` and ``v``: each head alone; ``average``: the paper's ``0.5 * (logits_T + logits_V)``;
  ``calibrated``: the run's own prediction (docs/method.md, "Heads fused by what they know");
- ``zero_shot`` and ``propagation`` (label propagation on the frozen model, the safeguard's
  posterior) for reference; ``pseudo_labels``: T's epoch-0 pseudo labels under the setting
  (label propagation's labels, or those moved to the estimated class proportions).

Paired bootstrap intervals (``reclip.bench.stats``, images resampled within each target
sample) compare the fusions with each head and with label propagation, and each setting's
scores with the other's. Writes benchmarks/results/head_fusion.json.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.bench import DEV_TARGETS
from reclip.bench.runner import load_target
from reclip.bench.stats import bootstrap_interval
from reclip.io import write_json
from reclip.method.heads import Fusion, combine
from reclip.method.priors import balanced_labels, estimate_priors

RESULTS = Path(__file__).parent / "results" / "head_fusion.json"
RULES = ("zero_shot", "propagation", "t", "v", "average", "calibrated", "pseudo_labels")
PAIRS = (("calibrated", "t"), ("calibrated", "v"), ("calibrated", "average"), ("calibrated", "propagation"),
         ("average", "propagation"), ("calibrated", "zero_shot"))


def predictions(run, balance: str) -> dict[str, torch.Tensor]:
    """(N,) predicted classes of every rule of RULES from a finished run (``run.logits``)."""
    logits = run.logits
    pseudo = run.posterior.argmax(-1) if balance == "off" else balanced_labels(run.posterior)
    return {"zero_shot": logits["zero_shot"].argmax(-1), "propagation": run.posterior.argmax(-1),
            "t": logits["t"].argmax(-1), "v": logits["v"].argmax(-1),
            "average": combine(logits["t"], logits["v"], "reclip", Fusion()).argmax(-1),
            "calibrated": logits["combined"].argmax(-1), "pseudo_labels": pseudo}


def recall(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the share of their images ``pred`` gets right."""
    present = labels.unique()
    return float(np.mean([(pred[labels == c] == c).float().mean().item() for c in present.tolist()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=list(DEV_TARGETS))
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--class-balance", nargs="+", default=["off", "estimated"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if any(not t.startswith("train-") for t in args.targets):
        p.error("use dev targets only (names starting with train-)")
    start = time.perf_counter()
    model = load_model("bridge")
    rows, correct = [], {}
    for sample in range(args.samples):
        for name in args.targets:
            dataset = load_target(name, args.data_root, args.n, 0, sample)
            dataset.transform = model.preprocess
            for balance in args.class_balance:
                config = ReclipConfig(head_fusion="calibrated", class_balance=balance, safeguard=0.0,
                                      safeguard_gain=-1.0, threads=args.threads)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    run = ReCLIP(model, config).fit(dataset)
                labels = run.predictions.labels
                preds = predictions(run, balance)
                row = {"target": name, "sample": sample, "class_balance": balance,
                       "true_proportions": (torch.bincount(labels, minlength=run.posterior.shape[1]).double()
                                            / len(labels)).tolist(),
                       "estimated_proportions": estimate_priors(run.posterior).tolist(),
                       "fusion": run.adapter.fusion.as_dict(),
                       **{f"{r}_top1": (preds[r] == labels).float().mean().item() for r in RULES},
                       **{f"{r}_recall": recall(preds[r], labels) for r in RULES}}
                rows.append(row)
                for r in RULES:
                    correct.setdefault((balance, r), []).append((preds[r] == labels).numpy().astype(float))
                print(f"{name:<22} s{sample} {balance:<9} " + "  ".join(
                    f"{r} {100 * row[f'{r}_top1']:.1f}/{100 * row[f'{r}_recall']:.1f}" for r in RULES), flush=True)
    summary = {}
    for balance in args.class_balance:
        mine = [r for r in rows if r["class_balance"] == balance]
        summary[balance] = {
            "mean_top1": {r: float(np.mean([x[f"{r}_top1"] for x in mine])) for r in RULES},
            "mean_recall": {r: float(np.mean([x[f"{r}_recall"] for x in mine])) for r in RULES},
            "top1_intervals": {f"{a} - {b}": bootstrap_interval(correct[(balance, a)], correct[(balance, b)]).as_dict()
                               for a, b in PAIRS}}
    if {"off", "estimated"} <= set(args.class_balance):
        summary["estimated - off"] = {r: bootstrap_interval(correct[("estimated", r)], correct[("off", r)]).as_dict()
                                      for r in ("calibrated", "average", "pseudo_labels")}
    write_json(args.out, {"n": args.n, "samples": args.samples, "targets": args.targets, "rows": rows,
                          "summary": summary, "seconds": round(time.perf_counter() - start, 1)})
    for balance in args.class_balance:
        s = summary[balance]
        print(f"{balance}: " + "  ".join(f"{r} {100 * s['mean_top1'][r]:.2f}/{100 * s['mean_recall'][r]:.2f}"
                                         for r in RULES))
        for pair, interval in s["top1_intervals"].items():
            print(f"   {pair}: {100 * interval['estimate']:+.2f} [{100 * interval['low']:+.2f}, "
                  f"{100 * interval['high']:+.2f}]")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
