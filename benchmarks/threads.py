"""Epoch times of a cached ``--n``-image ``reclip adapt`` run (bridge model, Fashion-MNIST TRAIN
split) with threads and loader workers chosen by ``reclip.runtime.budget`` (the default)
against torch's own thread count plus one loader worker (the old default on 2 cores), idle and
with other busy processes (a 2-thread torch matmul loop each) on the cores. Every record
carries ``lscpu``'s model name and caches and the load average before and after it.

    python benchmarks/threads.py [--n 500] [--busy 0 1] [--epochs 3] [--cache DIR]
        [--out benchmarks/results/threads.json]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from label_propagation import lscpu  # noqa: E402

SETTINGS = {"budget (default)": [], "old default: 2 threads + 1 worker": ["--threads", "2", "--workers", "1"]}
BUSY = "import torch; torch.set_num_threads(2); a = torch.randn(1500, 1500); b = a.clone()\nwhile True: torch.mm(a, a, out=b)"


def adapt(out: Path, cache: Path, n: int, epochs: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "reclip", "adapt", "--model", "bridge", "--dataset", "fashion-mnist",
               "--data-root", "/usr/share/datasets/fashion-mnist", "--split", "train", "--max-images", str(n),
               "--epochs", str(epochs), "--out", str(out), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RECLIP_CACHE": str(cache)})
    if done.returncode:
        return {"status": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    metrics = json.loads((out / "metrics.json").read_text())
    return {"status": "ok", "wall_seconds": round(time.perf_counter() - start, 1),
            "epoch_seconds": [e["seconds"] for e in metrics["epochs"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="images of the run")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads.json")
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: a fresh one)")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp, "cache")
        adapt(Path(tmp, "warm"), cache, args.n, 1, [])  # fills the feature cache
        for busy in args.busy:
            for name, extra in SETTINGS.items():
                others = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
                try:
                    load = [round(x, 2) for x in os.getloadavg()]
                    record = adapt(Path(tmp, f"{busy}-{len(records)}"), cache, args.n, args.epochs, extra)
                    after = [round(x, 2) for x in os.getloadavg()]
                finally:
                    for process in others:
                        process.kill()
                        process.wait()
                records.append({"setting": name, "n": args.n, "epochs": args.epochs, "busy_processes": busy,
                                "load_average_before": load, "load_average_after": after, **record,
                                "cores": len(os.sched_getaffinity(0)), "machine": lscpu()})
                print(records[-1], file=sys.stderr, flush=True)
    args.out.write_text(json.dumps({"argv": sys.argv[1:], "runs": records}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
