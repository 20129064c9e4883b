"""After the fact, with the labels: did the safeguard fall back where it should have, on the reclip
cells of a finished ``reclip bench`` folder (issue 27's check at ``--n 300``)?

    python benchmarks/safeguard_check.py benchmarks/results/offline_n300 \\
        --data-root /usr/share/datasets/fashion-mnist

For every reclip cell it reruns reclip with both safeguard checks off (features from the cache;
the run is deterministic, so the kept cells reproduce their top-1) and compares the adapted
predictions with zero-shot's image by image: "better" / "worse" when the paired 95% bootstrap
interval of the top-1 change excludes 0, else "noise". A good safeguard falls back on no
"better" cell and on every "worse" one. Writes ``safeguard_check.json`` into the folder. Report
only: never used to choose a setting.
"""
from __future__ import annotations

import argparse
import collections
import json
import warnings
from pathlib import Path

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.bench import load_target
from reclip.bench.stats import bootstrap_interval
from reclip.io import write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", type=Path, help="a finished reclip bench folder")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    cells = [r for r in json.loads((args.bench / "results.json").read_text()) if r["method"] == "reclip"]
    models, rows = {}, []
    for cell in cells:
        model = models.setdefault(cell["model"], load_model(cell["model"]))
        dataset = load_target(cell["dataset"], args.data_root, cell["n"], 0, cell["sample"])
        dataset.transform = model.preprocess
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = ReCLIP(model, ReclipConfig(safeguard=0.0, safeguard_gain=-1.0)).fit(dataset)
        labels = run.predictions.labels.numpy()
        adapted = (run.predictions.pred.numpy() == labels).astype(float)
        zero_shot = (run.zero_shot.pred.numpy() == labels).astype(float)
        change = bootstrap_interval([adapted], [zero_shot])
        truth = {"win": "better", "loss": "worse"}.get(change.verdict, "noise")
        rows.append({"model": cell["model"], "target": cell["dataset"], "sample": cell["sample"], "n": cell["n"],
                     "fell_back": bool(cell["fell_back"]), "reported_top1": cell["acc1"],
                     "adapted_top1": float(adapted.mean()), "zero_shot_top1": float(zero_shot.mean()),
                     "change": change.as_dict(), "truth": truth})
        print(f"{cell['model']:<13} {cell['dataset']:<20} s{cell['sample']} "
              f"{'fell back' if cell['fell_back'] else 'kept':<9} zero-shot {100 * zero_shot.mean():5.1f} "
              f"adapted {100 * adapted.mean():5.1f} {truth}", flush=True)
    counts = collections.Counter(f"{'fell back' if r['fell_back'] else 'kept'} / {r['truth']}" for r in rows)
    write_json(args.bench / "safeguard_check.json", {"cells": rows, "counts": dict(counts)})
    print(dict(counts))


if __name__ == "__main__":
    main()
