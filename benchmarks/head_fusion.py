"""Each head alone against their fusions, and label propagation's pseudo labels with and without
the class balance, on the reclip cells of a dev bench (Fashion-MNIST TRAIN split; never the
reported targets).

    reclip bench --targets train-clean train-shot_noise-5 train-motion_blur-3 train-fog-4 \\
        train-subset-4 train-longtail-50 --models bridge --samples 2 --n 2000 \\
        --methods zero-shot transductive reclip --data-root /usr/share/datasets/fashion-mnist \\
        --out benchmarks/results/dev_heads_balance
    python benchmarks/head_fusion.py --bench benchmarks/results/dev_heads_balance \\
        --data-root /usr/share/datasets/fashion-mnist

The fusion only shapes the prediction (pseudo labels, training and the heads' agreement never
read it), so it can be scored exactly on the heads a finished run left: for every reclip cell
of the bench (default settings; V's tower frozen, as on the bridge) it reads the final heads
from the cell's checkpoint and the frozen features from the feature cache, runs label
propagation on the frozen model (the safeguard's posterior) and scores, by top-1 and mean
per-class recall against the dev labels:

- ``t`` and ``v``: each head alone; ``average``: the paper's ``0.5 * (logits_T + logits_V)``;
  ``calibrated``: ``head_fusion="calibrated"`` (docs/method.md, "Heads fused by what they
  know"); ``calibrated_final``: that prediction after the safeguard (what a
  ``head_fusion="calibrated"`` run reports);
- ``zero_shot`` and ``propagation`` (label propagation on the frozen model) for reference;
- ``pseudo_off`` / ``pseudo_estimated``: T's first pseudo labels (label propagation's labels)
  and the same moved to the EM-estimated class proportions (``class_balance="estimated"``).

Paired bootstrap intervals (``reclip.bench.stats``: images resampled within each target
sample, the mean over target samples) compare the rules. Writes benchmarks/results/head_fusion.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from reclip import ReclipConfig, load_model
from reclip.bench.runner import Cell, load_target
from reclip.bench.stats import bootstrap_interval
from reclip.io import write_json
from reclip.method.adapter import Adapter
from reclip.method.frozen import frozen_view
from reclip.method.heads import Fusion, combine, fuse, head_logits
from reclip.method.priors import balanced_labels, estimate_priors
from reclip.method.safeguard import confidence_target, head_agreement, judge_run
from reclip.method.transduce.peers import LabelPropagation

RESULTS = Path(__file__).parent / "results" / "head_fusion.json"
RULES = ("zero_shot", "propagation", "t", "v", "average", "calibrated", "calibrated_final", "pseudo_off",
         "pseudo_estimated")
PAIRS = (("calibrated", "t"), ("calibrated", "v"), ("calibrated", "average"), ("average", "t"), ("average", "v"),
         ("calibrated", "propagation"), ("calibrated_final", "propagation"), ("calibrated_final", "zero_shot"),
         ("average", "propagation"), ("pseudo_estimated", "pseudo_off"))


def cell_predictions(model, cell: Cell, bench: Path, data_root: str | None, n: int) -> tuple[dict, torch.Tensor, dict]:
    """({rule: (N,) classes}, (N,) labels, extras) of one reclip cell of the bench."""
    run = bench / "runs" / cell.key
    adapter, heads = Adapter.load(run), load_file(str(run / "checkpoint" / "state.safetensors"))
    if adapter.image_norms:
        raise SystemExit(f"{cell.key}: V's tower trained; this script scores frozen-V runs only")
    dataset = load_target(cell.target, data_root, n, 0, cell.sample)
    dataset.transform = model.preprocess
    view = frozen_view(model, dataset, adapter.meta["templates"], batch_size=64, workers=0, cache=True)
    f = view.features.features
    config = ReclipConfig().for_model(model.contrastive)
    posterior = LabelPropagation(config.propagation_settings(len(dataset.classnames)))(f, view.classifier).probs
    logits_t, logits_v = head_logits(f, f, heads["head.t_classifier"], heads["head.v_classifier"])
    calibrated, fusion = fuse(logits_t, logits_v, "reclip", "calibrated", confidence_target(posterior))
    zero_shot = view.zero_shot_logits.argmax(-1)
    decision = judge_run(calibrated, head_agreement(f, f, heads["head.t_classifier"], heads["head.v_classifier"]),
                         posterior, zero_shot, config.stage_settings("safeguard"))
    preds = {"zero_shot": zero_shot, "propagation": posterior.argmax(-1), "t": logits_t.argmax(-1),
             "v": logits_v.argmax(-1), "average": combine(logits_t, logits_v, "reclip", Fusion()).argmax(-1),
             "calibrated": calibrated.argmax(-1),
             "calibrated_final": zero_shot if decision.kept == "zero-shot" else calibrated.argmax(-1),
             "pseudo_off": posterior.argmax(-1), "pseudo_estimated": balanced_labels(posterior)}
    labels = view.features.labels
    extras = {"fusion": fusion.as_dict(), "kept": decision.kept,
              "true_proportions": (torch.bincount(labels, minlength=posterior.shape[1]).double() / len(labels)).tolist(),
              "estimated_proportions": estimate_priors(posterior).tolist()}
    return preds, labels, extras


def recall(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the share of their images ``pred`` gets right."""
    return float(np.mean([(pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", type=Path, required=True, help="a dev bench folder with reclip cells")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    start = time.perf_counter()
    model = load_model("bridge")
    cells = sorted({Cell(path.name.split("__")[0], "bridge", None, "reclip", int(path.name.rsplit("__s", 1)[1]))
                    for path in (args.bench / "runs").iterdir() if path.name.split("__")[3] == "reclip"},
                   key=lambda c: (c.sample, c.target))
    if any(not c.target.startswith("train-") for c in cells):
        p.error("use dev targets only (names starting with train-)")
    rows, correct = [], {r: [] for r in RULES}
    for cell in cells:
        preds, labels, extras = cell_predictions(model, cell, args.bench, args.data_root, args.n)
        row = {"target": cell.target, "sample": cell.sample, **extras,
               **{f"{r}_top1": (preds[r] == labels).float().mean().item() for r in RULES},
               **{f"{r}_recall": recall(preds[r], labels) for r in RULES}}
        rows.append(row)
        for r in RULES:
            correct[r].append((preds[r] == labels).numpy().astype(float))
        print(f"{cell.target:<22} s{cell.sample} " + "  ".join(
            f"{r} {100 * row[f'{r}_top1']:.1f}/{100 * row[f'{r}_recall']:.1f}" for r in RULES), flush=True)
    summary = {"mean_top1": {r: float(np.mean([x[f"{r}_top1"] for x in rows])) for r in RULES},
               "mean_recall": {r: float(np.mean([x[f"{r}_recall"] for x in rows])) for r in RULES},
               "top1_intervals": {f"{a} - {b}": bootstrap_interval(correct[a], correct[b]).as_dict() for a, b in PAIRS}}
    write_json(args.out, {"bench": str(args.bench), "n": args.n, "rows": rows, "summary": summary,
                          "seconds": round(time.perf_counter() - start, 1)})
    print("mean top-1 / recall: " + "  ".join(f"{r} {100 * summary['mean_top1'][r]:.2f}/"
                                               f"{100 * summary['mean_recall'][r]:.2f}" for r in RULES))
    for pair, i in summary["top1_intervals"].items():
        print(f"   {pair}: {100 * i['estimate']:+.2f} [{100 * i['low']:+.2f}, {100 * i['high']:+.2f}] {i['verdict']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
