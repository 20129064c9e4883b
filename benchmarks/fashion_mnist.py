"""Fashion-MNIST with real pretrained weights: zero-shot vs label propagation vs TransCLIP vs ReCLIP.

    python benchmarks/fashion_mnist.py [--n 10000] [--split test] [--model bridge]
        [--modes zero-shot transductive transclip t-only v-only reclip reclip-v-frozen]

A bridge model (``bridge``: ImageNet EfficientNet-Lite0 + MiniLM, shipped in pip packages;
``bridge-lite1`` / ``bridge-lite2``: the Lite1 / Lite2 image towers) on
Fashion-MNIST from Debian's dataset-fashion-mnist package. Each mode is one
``reclip.ReCLIP(model, config).fit`` in its own process (so peak memory is per mode), all
sharing one feature cache; ``reclip-v-frozen`` is ReCLIP with ``v_tower="frozen"``. Results
are merged into benchmarks/results/fashion_mnist.json under "<split> n=<n>" (with " <model>"
for models other than ``bridge``; top-1, mean
per-class recall, ECE, seconds, peak memory, per-epoch records of the training modes).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from reclip.io import write_json

RESULTS = Path(__file__).parent / "results" / "fashion_mnist.json"
MODES = {"zero-shot": {"mode": "zero-shot"}, "transductive": {"mode": "transductive"},
         "transclip": {"mode": "transclip"},
         "t-only": {"mode": "t-only"}, "v-only": {"mode": "v-only"}, "reclip": {"mode": "reclip"},
         "reclip-v-frozen": {"mode": "reclip", "v_tower": "frozen"}}
KEYS = ("top1", "mean_per_class_recall", "ece")


def run_mode(settings: dict, n: int, split: str, data_root: str, cache: str, model_spec: str) -> dict:
    """One fit in this (child) process; returns its benchmark row."""
    os.environ["RECLIP_CACHE"] = cache
    import reclip

    model = reclip.load_model(model_spec)
    dataset = reclip.random_subset(reclip.load_dataset("fashion-mnist", root=data_root, split=split,
                                                       transform=model.preprocess), n)
    result = reclip.ReCLIP(model, reclip.ReclipConfig(**settings)).fit(dataset)
    m = result.metrics
    row = {k: round(m["final"][k], 4) for k in KEYS}
    row.update(seconds=m["seconds"], peak_memory_mb=m["peak_memory_mb"])
    row.update({f"final_{k}": round(m["final"][k], 4) for k in ("top1_t", "top1_v") if k in m["final"]})
    if result.history:
        row.update(config=m["config"], epochs=m["epochs"], passes=m["passes"])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--model", default="bridge", choices=("bridge", "bridge-lite1", "bridge-lite2"))
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = results.setdefault(f"{args.split} n={args.n}" + ("" if args.model == "bridge" else f" {args.model}"), {})
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.environ.get("RECLIP_CACHE", f"{tmp}/cache")
        for mode in args.modes:
            start = time.perf_counter()
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # a fresh process per mode
                row = pool.submit(run_mode, MODES[mode], args.n, args.split, args.data_root, cache,
                                  args.model).result()
            runs[mode] = {"date": time.strftime("%Y-%m-%d %H:%M"), "settings": MODES[mode], **row,
                          "wall_seconds": round(time.perf_counter() - start, 1)}
            print(mode, {k: runs[mode][k] for k in (*KEYS, "seconds")}, flush=True)
            write_json(args.out, results)  # after every mode: nothing lost
    print(f"{'mode':<16}{'top-1':>8}{'recall':>8}{'ECE':>8}{'seconds':>9}")
    for mode, r in runs.items():
        print(f"{mode:<16}{100 * r['top1']:>8.2f}{100 * r['mean_per_class_recall']:>8.2f}{r['ece']:>8.3f}"
              f"{r['seconds']:>9.0f}")


if __name__ == "__main__":
    main()
