"""How much each head of reclip weighs in its prediction, and whether a stronger T or another
way of combining the heads adds to it, on dev targets only (Fashion-MNIST TRAIN split; never
the reported ones).

    python benchmarks/head_combination.py --seeds 0 1 --lr-t 0.001 0.01   # 16 dev targets x 2 samples

reclip predicts with ``0.5 * (logits_T + logits_V)``, both on the model's logit scale
(docs/method.md, "The loop"). For every dev target sample and every ``lr_t`` it runs reclip
through the library (defaults otherwise; the safeguard off, so that the adapted logits are
always the prediction) and scores by top-1 against the dev labels:

- ``t`` and ``v``: each head alone (T's trained text head on the frozen features, V's
  centroid head);
- ``average``: the heads' logits averaged, what reclip predicts;
- ``standardised``: each head's logits divided by their spread before averaging, so that both
  heads weigh the same. A head's spread is the standard deviation, over the target's images and
  classes, of its logits minus each image's mean logit (the part that decides the class).

It also records ``spread_ratio``, V's spread over T's: how much more V weighs in the average,
reclip's ``head_agreement``, and reclip's ECE under two calibrations: ``ece`` (today's: the mean
confidence set to label propagation's) and ``ece_agreement_target`` (the mean confidence set to
the head agreement, the rule before).
Writes benchmarks/results/head_combination.json.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.bench import load_target
from reclip.io import write_json
from reclip.metrics import classification_metrics
from reclip.method.safeguard import fit_temperature

from dev_args import dev_parser, parse_dev_args

RESULTS = Path(__file__).parent / "results" / "head_combination.json"
RULES = ("t", "v", "average", "standardised")


def spread(logits: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the N x C ``logits`` minus each row's mean."""
    return (logits - logits.mean(dim=1, keepdim=True)).std()


def scores(run, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 of every rule of RULES and the heads' spread ratio, from the run's logits of each head."""
    t, v = run.logits["t"], run.logits["v"]
    logits = {"t": t, "v": v, "average": run.logits["combined"], "standardised": 0.5 * (t / spread(t) + v / spread(v))}
    out = {rule: (logits[rule].argmax(-1) == labels).float().mean().item() for rule in RULES}
    out["spread_ratio"] = (spread(v) / spread(t)).item()
    return out


def agreement_calibrated_ece(run) -> float:
    """ECE of a run's adapted predictions recalibrated so that their mean confidence is the final
    head agreement (the run's combined logits, before its own calibration)."""
    logits = run.logits["combined"]
    probs = (logits / fit_temperature(logits, run.safeguard.agreement)).softmax(dim=-1)
    return classification_metrics(probs, run.predictions.labels)["ece"]


def main() -> None:
    p = dev_parser(__doc__, RESULTS)
    p.add_argument("--lr-t", type=float, nargs="+", default=[0.001, 0.01])
    args = parse_dev_args(p)
    start = time.perf_counter()
    model = load_model("bridge")
    rows = []
    for name, seed in args.cells:
        dataset = load_target(name, None, args.n, seed)
        dataset.transform = model.preprocess
        for lr_t in args.lr_t:
            config = ReclipConfig(seed=seed, lr_t=lr_t, safeguard=0.0, safeguard_gain=-1.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = ReCLIP(model, config).fit(dataset)
            row = {"target": name, "seed": seed, "lr_t": lr_t,
                   "zero_shot": run.metrics["zero_shot"]["top1"], "reclip": run.metrics["final"]["top1"],
                   "ece": run.metrics["final"]["ece"], "head_agreement": run.metrics["safeguard"]["agreement"],
                   "ece_agreement_target": agreement_calibrated_ece(run),
                   **scores(run, run.predictions.labels)}
            rows.append(row)
            print(f"{name:<28} {seed}  lr_t {lr_t:g}  " + "  ".join(f"{r} {100 * row[r]:5.1f}" for r in RULES)
                  + f"  spread ratio {row['spread_ratio']:.1f}", flush=True)
    summary = {}
    for lr_t in args.lr_t:
        mine = [r for r in rows if r["lr_t"] == lr_t]
        summary[f"lr_t={lr_t:g}"] = {
            **{rule: {"mean_top1": sum(r[rule] for r in mine) / len(mine),
                      "below_zero_shot": sum(r[rule] < r["zero_shot"] for r in mine)} for rule in RULES},
            **{f"mean_{k}": sum(r[k] for r in mine) / len(mine)
               for k in ("spread_ratio", "head_agreement", "ece", "ece_agreement_target")},
            "zero_shot_mean_top1": sum(r["zero_shot"] for r in mine) / len(mine)}
    write_json(args.out, {"n": args.n, "seeds": args.seeds, "targets": rows, "summary": summary,
                          "seconds": round(time.perf_counter() - start, 1)})
    for setting, s in summary.items():
        print(f"{setting:<10} " + "  ".join(f"{rule} {100 * s[rule]['mean_top1']:5.2f} ({s[rule]['below_zero_shot']} below)"
                                             for rule in RULES) + f"  spread ratio {s['mean_spread_ratio']:.1f}"
              f"  head agreement {s['mean_head_agreement']:.3f}  ECE {s['mean_ece']:.3f}"
              f" ({s['mean_ece_agreement_target']:.3f} calibrated to the head agreement)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
