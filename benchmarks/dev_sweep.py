"""Compare reclip settings on the dev targets only (Fashion-MNIST TRAIN split; never the reported ones).

    python benchmarks/dev_sweep.py --settings "" "lr_t=0.003" "epochs=3" "k=10" [--seeds 0 1] [--n 2000]
        [--model bridge-lite1] [--cells train-clean:0 train-snow-5:1 ...]

``--cells`` runs exactly the given (target, seed) samples instead of every target x seed, so
one report pools samples drawn unevenly. Each setting is a space-free list of ``name=value``
overrides of ``ReclipConfig`` (comma separated; "" is the defaults). Every setting runs reclip
through the library on DEV_TARGETS + HARD_DEV_TARGETS (features come from the cache); the labels
of these dev targets score it: mean top-1, mean per-class recall, mean ECE and the dev targets
left below zero-shot (top-1 or recall). Each setting after the first also gets the paired
bootstrap 95% interval (``reclip.bench.stats``, images resampled within each target sample) of
its mean top-1 minus the first setting's (``vs_first``) and minus every setting between them
(``vs <setting>``), and every setting of its mean top-1 minus zero-shot (``vs_zero_shot``).
Writes benchmarks/results/dev_sweep.json (``--out``).
"""
from __future__ import annotations

import ast
import time
import warnings
from pathlib import Path

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.bench import load_target
from reclip.bench.stats import bootstrap_interval
from reclip.io import write_json

from dev_args import dev_parser, parse_dev_args

RESULTS = Path(__file__).parent / "results" / "dev_sweep.json"


def parse_setting(text: str) -> dict:
    """"lr_t=0.003,epochs=3" -> {"lr_t": 0.003, "epochs": 3} (values as Python literals, else strings)."""
    overrides = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    return overrides


def main() -> None:
    p = dev_parser(__doc__, RESULTS)
    p.add_argument("--settings", nargs="+", default=[""])
    p.add_argument("--model", default="bridge", help="model spec (default: bridge)")
    args = parse_dev_args(p)
    model = load_model(args.model)
    datasets = {}
    for name, seed in args.cells:
        datasets[name, seed] = load_target(name, None, args.n, seed)
        datasets[name, seed].transform = model.preprocess
    report = {"model": args.model, "n": args.n, "seeds": sorted({seed for _, seed in args.cells}),
              "targets": list(dict.fromkeys(name for name, _ in args.cells)),
              "cells": [f"{name}:{seed}" for name, seed in args.cells], "settings": {}}
    correct: dict[str, list] = {}
    for setting in args.settings:
        start = time.perf_counter()
        rows = []
        for (name, seed), dataset in datasets.items():
            config = ReclipConfig(seed=seed, **parse_setting(setting))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = ReCLIP(model, config).fit(dataset)
            labels = run.predictions.labels.numpy()
            if setting == args.settings[0]:  # zero-shot is the same in every setting
                correct.setdefault("zero-shot", []).append(run.zero_shot.pred.numpy() == labels)
            correct.setdefault(setting, []).append(run.predictions.pred.numpy() == labels)
            zero_shot, final = run.metrics["zero_shot"], run.metrics["final"]
            rows.append({"target": name, "seed": seed, "zero_shot": zero_shot, "final": final,
                         "kept": run.metrics.get("safeguard", {}).get("kept", "adapted"),
                         "safeguard": run.metrics.get("safeguard")})
        mean = {m: sum(r["final"][m] for r in rows) / len(rows) for m in ("top1", "mean_per_class_recall", "ece")}
        below = [f"{r['target']}/{r['seed']}" for r in rows if r["final"]["top1"] < r["zero_shot"]["top1"]
                 or r["final"]["mean_per_class_recall"] < r["zero_shot"]["mean_per_class_recall"]]
        intervals = {"vs_zero_shot": bootstrap_interval(correct[setting], correct["zero-shot"]).as_dict()}
        if setting != args.settings[0]:
            intervals["vs_first"] = bootstrap_interval(correct[setting], correct[args.settings[0]]).as_dict()
        for earlier in args.settings[1:args.settings.index(setting)]:
            intervals[f"vs {earlier or 'defaults'}"] = bootstrap_interval(correct[setting], correct[earlier]).as_dict()
        report["settings"][setting or "defaults"] = {
            "config": {**config.to_dict(), "seed": report["seeds"]}, "mean": mean, "below_zero_shot": below,
            "intervals": intervals, "rows": rows, "seconds": round(time.perf_counter() - start, 1)}
        print(f"{setting or 'defaults':<32} top-1 {100 * mean['top1']:.2f}  recall {100 * mean['mean_per_class_recall']:.2f}  "
              f"ECE {mean['ece']:.3f}  below zero-shot: {', '.join(below) or 'none'}  "
              f"{'  '.join(f'{k} {_shown(v)}' for k, v in intervals.items())}", flush=True)
    write_json(args.out, report)
    print(f"wrote {args.out}")


def _shown(interval: dict) -> str:
    """"+1.23 [+0.40, +2.05] win": a paired interval in points."""
    return (f"{100 * interval['estimate']:+.2f} [{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}] "
            f"{interval['verdict']}")


if __name__ == "__main__":
    main()
