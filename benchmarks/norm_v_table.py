"""V's options on a BatchNorm tower, compared before the safeguard, from a finished bench folder.

    reclip bench --targets train-clean train-shot_noise-5 train-fog-4 --models bridge --samples 2 --n 500 \\
        --methods zero-shot transductive reclip-v-frozen reclip-v-bn-blend-0.2 reclip-v-bn-blend-0.5 \\
        reclip-v-train-lr1e-4 reclip-v-bn-blend-0.2-train --data-root /usr/share/datasets/fashion-mnist \\
        --out benchmarks/results/norm_v_dev
    python benchmarks/norm_v_table.py benchmarks/results/norm_v_dev

The bench's own tables (results.md, intervals.json: paired bootstrap over images) score what a
user gets, after the safeguard. This reads each reclip run's metrics.json for the adapted
model's top-1 whether or not the safeguard kept it (``final_adapted`` when it fell back), and
compares every option with V frozen on the same (target, sample) cells: the mean paired
difference with a 95% t interval over the cells (the samples are independent image sets).
Writes ``<folder>/adapted.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from scipy import stats

BASELINE = "reclip-v-frozen"


def adapted_top1(folder: Path) -> dict[str, dict[str, float]]:
    """{method: {"<target> s<sample>": adapted top-1}} of every finished reclip run in ``folder``."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted((folder / "runs").glob("*/metrics.json")):
        target, _, _, method, sample = path.parent.name.split("__")
        metrics = json.loads(path.read_text())
        out.setdefault(method, {})[f"{target} {sample}"] = (metrics.get("final_adapted") or metrics["final"])["top1"]
    return out


def paired(option: dict[str, float], baseline: dict[str, float]) -> dict:
    """Mean of ``option`` minus ``baseline`` over their common cells, with a 95% t interval."""
    cells = sorted(set(option) & set(baseline))
    diffs = [option[c] - baseline[c] for c in cells]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return {"cells": len(cells), "difference": mean, "low": None, "high": None}
    half = stats.t.ppf(0.975, len(diffs) - 1) * stats.tstd(diffs) / len(diffs) ** 0.5
    return {"cells": len(cells), "difference": mean, "low": mean - half, "high": mean + half}


def main() -> None:
    folder = Path(sys.argv[1])
    top1 = adapted_top1(folder)
    table = {m: {"mean_top1": sum(v.values()) / len(v), "per_cell": v, "vs_frozen": paired(v, top1[BASELINE])}
             for m, v in top1.items()}
    (folder / "adapted.json").write_text(json.dumps(table, indent=1) + "\n")
    for method, row in table.items():
        d = row["vs_frozen"]
        interval = f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]" if d["low"] is not None else ""
        print(f"{method:<30} adapted top-1 {100 * row['mean_top1']:6.2f}  vs V frozen "
              f"{100 * d['difference']:+6.2f} {interval} over {d['cells']} cells")


if __name__ == "__main__":
    main()
