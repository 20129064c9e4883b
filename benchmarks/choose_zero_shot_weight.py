"""Study mixing the zero-shot logits into reclip's final logits, on dev targets only
(Fashion-MNIST TRAIN split; never the reported ones).

    python benchmarks/choose_zero_shot_weight.py [--n 500]   # DEV_TARGETS + HARD_DEV_TARGETS

For every dev target it runs zero-shot and reclip with the defaults except the safeguard (off,
so the adapted logits always exist), then scores, for every weight ``beta`` of the grid, the
logits ``(1 - beta) * adapted + beta * zero_shot`` (both raw, on the model's logit scale),
calibrated as reclip's output was then (a temperature making the mean confidence equal the
final T/V head agreement). The labels of these dev targets score each weight; the chosen
weight is the one with the best dev mean top-1 among those that leave no dev target below
zero-shot in top-1 or mean per-class recall (or, when none does, the fewest such targets). Writes
benchmarks/results/zero_shot_weight_dev.json. A study only: the library has no such weight (why:
benchmarks/README.md, "Other settings tried on the dev targets").
"""
from __future__ import annotations

import time
from pathlib import Path

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.bench import load_target
from reclip.io import write_json

from dev_args import dev_parser, parse_dev_args
from reclip.method.safeguard import fit_temperature
from reclip.metrics import classification_metrics

RESULTS = Path(__file__).parent / "results" / "zero_shot_weight_dev.json"
BETAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def target_logits(model, name: str, n: int, seed: int) -> dict:
    """Raw adapted and zero-shot logits (N x C, as the run computed them), head agreement and labels."""
    dataset = load_target(name, None, n, seed)
    dataset.transform = model.preprocess
    run = ReCLIP(model, ReclipConfig(seed=seed, safeguard=0.0, safeguard_gain=-1.0)).fit(dataset)
    return {"adapted": run.logits["combined"], "zero_shot": run.logits["zero_shot"],
            "agreement": run.safeguard.agreement, "labels": run.predictions.labels}


def scores(logits: dict, beta: float) -> dict:
    mixed = (1 - beta) * logits["adapted"] + beta * logits["zero_shot"]
    temperature = fit_temperature(mixed, logits["agreement"])
    return classification_metrics((mixed / temperature).softmax(-1), logits["labels"])


def main() -> None:
    args = parse_dev_args(dev_parser(__doc__, RESULTS))
    start = time.perf_counter()
    model = load_model("bridge")
    rows = []
    for name, seed in args.cells:
        logits = target_logits(model, name, args.n, seed)
        zero_shot = classification_metrics(logits["zero_shot"].softmax(-1), logits["labels"])
        row = {"target": name, "seed": seed, "zero_shot": zero_shot, "by_beta": {str(b): scores(logits, b) for b in BETAS}}
        rows.append(row)
        print(f"{name:<28} zero-shot {100 * zero_shot['top1']:5.1f}  "
              + "  ".join(f"{b}: {100 * row['by_beta'][str(b)]['top1']:5.1f}" for b in BETAS), flush=True)

    summary = {}
    for b in BETAS:
        per = [r["by_beta"][str(b)] for r in rows]
        below = [r["target"] for r, m in zip(rows, per)
                 if m["top1"] < r["zero_shot"]["top1"] or m["mean_per_class_recall"] < r["zero_shot"]["mean_per_class_recall"]]
        summary[str(b)] = {"mean_top1": sum(m["top1"] for m in per) / len(per),
                           "mean_recall": sum(m["mean_per_class_recall"] for m in per) / len(per),
                           "mean_ece": sum(m["ece"] for m in per) / len(per), "below_zero_shot": below}
    chosen = min(BETAS, key=lambda b: (len(summary[str(b)]["below_zero_shot"]), -round(summary[str(b)]["mean_top1"], 6), b))
    report = {"n": args.n, "seeds": args.seeds, "betas": BETAS, "targets": rows, "summary": summary, "chosen": chosen,
              "rule": "fewest dev targets below zero-shot (top-1 or mean per-class recall), then the best dev "
                      "mean top-1, then the smaller weight",
              "zero_shot_mean_top1": sum(r["zero_shot"]["top1"] for r in rows) / len(rows),
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(args.out, report)
    for b in BETAS:
        s = summary[str(b)]
        print(f"beta {b}: mean top-1 {100 * s['mean_top1']:.2f}, recall {100 * s['mean_recall']:.2f}, "
              f"ECE {s['mean_ece']:.3f}, below zero-shot: {', '.join(s['below_zero_shot']) or 'none'}")
    print(f"chosen beta {chosen} (zero-shot mean top-1 {100 * report['zero_shot_mean_top1']:.2f}); wrote {args.out}")


if __name__ == "__main__":
    main()
