"""Study label-free signals that could predict when reclip ends below zero-shot, and choose
the safeguard threshold, on dev targets only (Fashion-MNIST TRAIN split; never the reported ones).

    python benchmarks/choose_safeguard.py [--seeds 0 1]   # DEV_TARGETS + HARD_DEV_TARGETS, 2,000 images each

For every dev target it runs zero-shot, label propagation and reclip with the defaults but both
safeguard checks off (the library's ``ReCLIP``; features come from the cache) and computes,
without labels:

- ``head_agreement``: the safeguard's first signal, T's and V's heads agreeing at the end;
- ``estimated_gain``: its second, the top-1 gain of reclip's predictions over zero-shot's that
  label propagation's probabilities on the final model, taken as soft labels, predict;
- ``agree_adapted_zero_shot``: reclip's and zero-shot's predictions agreeing;
- ``agree_propagation_zero_shot``: label propagation's and zero-shot's predictions agreeing;
- ``agree_on_confident``: reclip agreeing with zero-shot on the 20% of images zero-shot is
  most confident about;
- ``marginal_entropy_change``: entropy of reclip's predicted-class histogram minus zero-shot's.

The labels are read afterwards only to say which targets reclip left below zero-shot (top-1
or mean per-class recall). For each signal: the AUROC of telling those targets apart (1 or 0:
perfect, 0.5: no better than chance). The safeguard threshold is the head-agreement value that
maximises the dev mean top-1 when every target below it keeps zero-shot, along with every
target whose estimated gain is at most the default ``safeguard_gain`` (0: a threshold with no
free choice in it), placed midway between the two dev targets' agreements it separates (0,
this check off, when none does better). Writes
benchmarks/results/safeguard_dev.json.
"""
from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import torch

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.method.safeguard import keeps_adapted
from reclip.bench import load_target
from reclip.io import write_json

from dev_args import dev_parser, parse_dev_args

RESULTS = Path(__file__).parent / "results" / "safeguard_dev.json"
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
THRESHOLDS = (0.0, 0.5, 0.55, 0.6)
SIGNALS = ("head_agreement", "estimated_gain", "agree_adapted_zero_shot", "agree_propagation_zero_shot",
           "agree_on_confident", "marginal_entropy_change")


def marginal_entropy(pred: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the histogram of the (N,) predicted classes."""
    p = torch.bincount(pred, minlength=num_classes).float() / len(pred)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def target_row(model, name: str, n: int, seed: int) -> dict:
    dataset = load_target(name, None, n, seed)
    dataset.transform = model.preprocess
    # both checks off, so that reclip's predictions are always the adapted ones (the signals are
    # recorded all the same); the study applies the checks afterwards. Zero-shot and label
    # propagation (the judge's posterior) come from the same run.
    run = ReCLIP(model, ReclipConfig(mode="reclip", seed=seed, safeguard=0.0, safeguard_gain=-1.0)).fit(dataset)
    zs, rc = run.zero_shot, run.predictions
    lp_pred = run.posterior.argmax(dim=-1)
    confident = zs.confidence >= zs.confidence.quantile(0.8)
    c = len(dataset.classnames)
    pred_t, pred_v = run.logits["t"].argmax(dim=-1), run.logits["v"].argmax(dim=-1)
    rows = torch.arange(len(rc.pred))
    gain_per_image = run.posterior[rows, rc.pred] - run.posterior[rows, zs.pred]
    signals = {
        "head_agreement": run.metrics["safeguard"]["agreement"],
        "chance_agreement": chance_agreement(pred_t, pred_v, c),
        "estimated_gain": run.metrics["safeguard"]["estimated_gain"],
        "estimated_gain_sd": float(gain_per_image.std()),
        "agree_adapted_zero_shot": float((rc.pred == zs.pred).float().mean()),
        "agree_propagation_zero_shot": float((lp_pred == zs.pred).float().mean()),
        "agree_on_confident": float((rc.pred == zs.pred)[confident].float().mean()),
        "marginal_entropy_change": marginal_entropy(rc.pred, c) - marginal_entropy(zs.pred, c),
    }
    z, a = zs.metrics(), rc.metrics()
    # read after the fact: the per-image difference of being right, adapted minus zero-shot
    right = (rc.pred == rc.labels).float() - (zs.pred == zs.labels).float()
    return {"target": name, "seed": seed, "n": len(rc.pred), **signals,
            "zero_shot_top1": z["top1"], "reclip_top1": a["top1"],
            "propagation_top1": float((lp_pred == rc.labels).float().mean()),
            "top1_change_sd": float(right.std()),
            "zero_shot_recall": z["mean_per_class_recall"], "reclip_recall": a["mean_per_class_recall"],
            "below_zero_shot": a["top1"] < z["top1"] or a["mean_per_class_recall"] < z["mean_per_class_recall"]}


def chance_agreement(pred_t: torch.Tensor, pred_v: torch.Tensor, num_classes: int) -> float:
    """The agreement two heads with the (N,) predictions' class histograms would reach by chance."""
    p_t = torch.bincount(pred_t, minlength=num_classes).float() / len(pred_t)
    p_v = torch.bincount(pred_v, minlength=num_classes).float() / len(pred_v)
    return float((p_t * p_v).sum())


def summary(rows: list[dict]) -> dict:
    """Per size: the AUROC of every signal for the targets below zero-shot; then every candidate
    rule (``LEVELS`` x ``THRESHOLDS``) scored on all sizes, and the chosen one (``choose_rule``)."""
    sizes = sorted({r["n"] for r in rows})
    scored = {f"level={level} threshold={theta}": {str(n): score([r for r in rows if r["n"] == n], level, theta)
                                                   for n in sizes}
              for level in LEVELS for theta in THRESHOLDS}
    return {"auroc": {str(n): {s: auroc([r for r in rows if r["n"] == n], s) for s in SIGNALS} for n in sizes},
            "truth": {str(n): dict(collections.Counter(truth(r) for r in rows if r["n"] == n)) for n in sizes},
            "rules": scored, "chosen": choose_rule(scored)}


def truth(row: dict) -> str:
    """After the fact, with the labels: "better" or "worse" when reclip's top-1 differs from
    zero-shot's beyond the paired 95% interval (normal, per-image differences), else "noise"."""
    half = 1.96 * row["top1_change_sd"] / row["n"] ** 0.5
    change = row["reclip_top1"] - row["zero_shot_top1"]
    return "better" if change - half > 0 else "worse" if change + half < 0 else "noise"


def keeps(row: dict, level: float, theta: float) -> bool:
    """The library's rule on a study row, the gain check at its default ``safeguard_gain``."""
    return keeps_adapted(row["head_agreement"], theta, row["estimated_gain"], ReclipConfig().safeguard_gain,
                         gain_sd=row["estimated_gain_sd"], n=row["n"], level=level)


def score(rows: list[dict], level: float, theta: float) -> dict:
    """How the rule does on ``rows`` (one size): fall-backs by the truth, and the mean top-1."""
    kept = [keeps(r, level, theta) for r in rows]
    fell = collections.Counter(truth(r) for r, k in zip(rows, kept) if not k)
    return {"fell_back_better": fell["better"], "fell_back_worse": fell["worse"], "fell_back_noise": fell["noise"],
            "mean_top1": sum(r["reclip_top1"] if k else r["zero_shot_top1"] for r, k in zip(rows, kept)) / len(rows),
            "mean_top1_adapted": sum(r["reclip_top1"] for r in rows) / len(rows),
            "mean_top1_zero_shot": sum(r["zero_shot_top1"] for r in rows) / len(rows)}


def choose_rule(scored: dict) -> str:
    """The rule that, over all sizes, falls back least on targets reclip made better, then most on
    those it made worse, then has the best mean top-1 (ties: the first, LEVELS and THRESHOLDS order)."""
    def key(name: str) -> tuple:
        per = scored[name].values()
        return (-sum(p["fell_back_better"] for p in per), sum(p["fell_back_worse"] for p in per),
                round(sum(p["mean_top1"] for p in per), 6))
    return max(scored, key=key)


def auroc(rows: list[dict], signal: str) -> float | None:
    """P(signal of a target below zero-shot < signal of one that is not), ties counted half."""
    bad = [r[signal] for r in rows if r["below_zero_shot"]]
    good = [r[signal] for r in rows if not r["below_zero_shot"]]
    if not bad or not good:
        return None
    wins = sum((b < g) + 0.5 * (b == g) for b in bad for g in good)
    return round(wins / (len(bad) * len(good)), 3)


def collect(model, args) -> list[dict]:
    """Every (size, target, seed) row, the ones already in ``args.out`` kept (an interrupted study
    continues); the file is rewritten after each new row."""
    rows = json.loads(args.out.read_text())["targets"] if args.out.is_file() else []
    done = {(r["n"], r["target"], r["seed"]) for r in rows}
    for n in args.sizes:
        for name, seed in args.cells:
            if (n, name, seed) in done:
                continue
            rows.append(target_row(model, name, n, seed))
            r = rows[-1]
            print(f"{n:>5} {name:<28} {seed} top-1 {100 * r['zero_shot_top1']:5.1f} -> {100 * r['reclip_top1']:5.1f}  "
                  + "  ".join(f"{s} {r[s]:.3f}" for s in SIGNALS) + ("  BELOW" if r["below_zero_shot"] else ""),
                  flush=True)
            write_json(args.out, {"targets": rows})
    return rows


def main() -> None:
    parser = dev_parser(__doc__, RESULTS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 2000],
                        help="images per target (each size draws its own targets)")
    args = parse_dev_args(parser)
    start = time.perf_counter()
    rows = collect(load_model("bridge"), args)
    report = {"sizes": args.sizes, "seeds": args.seeds, "targets": rows, **summary(rows),
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "targets"}, indent=1))


if __name__ == "__main__":
    main()
