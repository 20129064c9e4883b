"""Choose the safeguard threshold on the dev targets (Fashion-MNIST TRAIN split), never on the
reported ones.

    python -m reclip bench --targets train-shot_noise-5 train-clean train-longtail-50 train-subset-4 \\
        --models bridge --methods zero-shot reclip --n 1000 --out runs/dev        # with safeguard 0
    python benchmarks/choose_safeguard.py runs/dev

For each dev target it reads zero-shot's cell and the unguarded reclip run (its final T/V head
agreement and its top-1 / mean per-class recall). A target "needs the fallback" when reclip's
top-1 or mean per-class recall is below zero-shot's. The threshold is the midpoint between the
highest agreement of a target that needs the fallback and the lowest agreement of one that does
not (when the two groups separate; otherwise the value that maximises the dev mean top-1 with
no target below zero-shot, if there is one). Writes benchmarks/results/safeguard_dev.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from reclip.bench import make_cells
from reclip.io import write_json

RESULTS = Path(__file__).parent / "results" / "safeguard_dev.json"


def dev_rows(out: Path) -> list[dict]:
    records = json.loads((out / "results.json").read_text())
    zero = {r["dataset"]: r for r in records if r["method"] == "zero-shot"}
    rows = []
    for r in records:
        if r["method"] != "reclip" or r["dataset"] not in zero:
            continue
        [cell] = make_cells([r["dataset"]], [r["model"] + (f"@{r['pretrained']}" if r["pretrained"] else "")],
                            ["reclip"])
        run = json.loads((out / "runs" / cell.key / "metrics.json").read_text())
        adapted = run.get("final_adapted", run["final"])
        z = zero[r["dataset"]]
        rows.append({"target": r["dataset"], "agreement": run["safeguard"]["agreement"],
                     "zero_shot_top1": z["acc1"], "reclip_top1": adapted["top1"],
                     "zero_shot_recall": z["mean_per_class_recall"], "reclip_recall": adapted["mean_per_class_recall"],
                     "needs_fallback": adapted["top1"] < z["acc1"]
                     or adapted["mean_per_class_recall"] < z["mean_per_class_recall"]})
    return rows


def choose(rows: list[dict]) -> tuple[float, str]:
    bad = [r["agreement"] for r in rows if r["needs_fallback"]]
    good = [r["agreement"] for r in rows if not r["needs_fallback"]]
    if not bad:
        return 0.0, "no dev target needs the fallback: the safeguard stays off"
    if not good or max(bad) < min(good):
        upper = min(good) if good else 1.0
        return round((max(bad) + upper) / 2, 4), "the midpoint between the two groups' agreements"

    def dev_mean(theta: float) -> tuple[bool, float]:
        kept = [(r["reclip_top1"], r["reclip_recall"]) if r["agreement"] >= theta else
                (r["zero_shot_top1"], r["zero_shot_recall"]) for r in rows]
        safe = all(k[0] >= r["zero_shot_top1"] and k[1] >= r["zero_shot_recall"] for k, r in zip(kept, rows))
        return safe, sum(k[0] for k in kept) / len(kept)

    candidates = sorted({0.0, *(r["agreement"] + 1e-4 for r in rows)})
    best = max(candidates, key=lambda t: dev_mean(t))
    return round(best, 4), "the groups overlap: the value with the best dev mean top-1 (safe first)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", type=Path, help="the output folder of the dev bench")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    rows = dev_rows(args.bench)
    threshold, rule = choose(rows)
    write_json(args.out, {"dev_targets": rows, "threshold": threshold, "rule": rule})
    for r in rows:
        print(f"{r['target']:<24} agreement {r['agreement']:.3f}  top-1 {100 * r['zero_shot_top1']:.2f} -> "
              f"{100 * r['reclip_top1']:.2f}  recall {100 * r['zero_shot_recall']:.2f} -> "
              f"{100 * r['reclip_recall']:.2f}  {'fallback' if r['needs_fallback'] else 'keep'}")
    print(f"threshold {threshold} ({rule}); wrote {args.out}")


if __name__ == "__main__":
    main()
