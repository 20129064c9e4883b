"""Fashion-MNIST with real pretrained weights: zero-shot vs label propagation vs ReCLIP.

    python benchmarks/fashion_mnist.py [--n 10000] [--modes zeroshot transductive t-only v-only reclip]

The bridge model (ImageNet EfficientNet-Lite0 + MiniLM, shipped in pip packages) on the
Fashion-MNIST test set from Debian's dataset-fashion-mnist package. Each mode runs as its own
``reclip`` process (so peak memory is per mode) sharing one feature cache; results are merged
into benchmarks/results/fashion_mnist.json (top-1, mean per-class recall, ECE, seconds, peak
memory, and per-epoch details for the training modes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reclip.io import write_json

RESULTS = Path(__file__).parent / "results" / "fashion_mnist.json"
MODES = ("zeroshot", "transductive", "t-only", "v-only", "reclip")
KEYS = ("top1", "mean_per_class_recall", "ece")


def run_mode(mode: str, n: int, data_root: str, out: Path, env: dict) -> dict:
    common = ["--model", "bridge", "--dataset", "fashion-mnist", "--data-root", data_root,
              "--max-images", str(n), "--out", str(out)]
    cmd = [sys.executable, "-m", "reclip"]
    cmd += ["zeroshot", *common] if mode == "zeroshot" else ["adapt", "--mode", mode, *common]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - start
    m = json.loads((out / "metrics.json").read_text())
    metrics = m if mode == "zeroshot" else m["final"]
    row = {k: round(metrics[k], 4) for k in KEYS}
    row.update(seconds=m["seconds"], wall_seconds=round(wall, 1), peak_memory_mb=m.get("peak_memory_mb"))
    row.update({f"final_{k}": round(metrics[k], 4) for k in ("top1_t", "top1_v") if k in metrics})
    if "epochs" in m:
        row.update(config=m["config"], epochs=m["epochs"], passes=m["passes"])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = results.setdefault(f"n={args.n}", {})
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RECLIP_CACHE": os.environ.get("RECLIP_CACHE", f"{tmp}/cache")}
        for mode in args.modes:
            runs[mode] = {"date": time.strftime("%Y-%m-%d %H:%M"),
                          **run_mode(mode, args.n, args.data_root, Path(tmp) / mode, env)}
            print(mode, {k: runs[mode][k] for k in (*KEYS, "seconds")}, flush=True)
            write_json(args.out, results)  # after every mode: nothing lost
    print(f"{'mode':<14}{'top-1':>8}{'recall':>8}{'ECE':>8}{'seconds':>9}")
    for mode, r in runs.items():
        print(f"{mode:<14}{100 * r['top1']:>8.2f}{100 * r['mean_per_class_recall']:>8.2f}{r['ece']:>8.3f}"
              f"{r['seconds']:>9.0f}")


if __name__ == "__main__":
    main()
