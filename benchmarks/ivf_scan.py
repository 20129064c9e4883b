"""Torch IVF scan against FAISS ``IndexIVFFlat`` on the same lists with the same probes
(``reclip.method.knn``): why ``knn="approx"`` scans with torch by default.

Label propagation's graph nodes of ``label_propagation.py``'s synthetic features (N images,
C classes, projected to C - 1 dimensions); k-means, lists and nprobe as ``knn_search`` chooses
them (calibrated for recall 0.95 at k = 20); then the first ``--queries`` nodes are searched for
their top k + 1 + SLACK candidates by each backend, alternately, ``--repeats`` times each.
Records ``lscpu``'s model name and caches and the load before and after.

    python benchmarks/ivf_scan.py [--n 200000] [--c 100] [--queries 20000] [--repeats 2]
        [--out benchmarks/results/ivf_scan.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from label_propagation import lscpu, synthetic  # noqa: E402


def main() -> None:
    from reclip.method import knn
    from reclip.method.propagation import _graph_coordinates, projection

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ivf_scan.json")
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    images, classes, _ = synthetic(args.n, args.c)
    basis = projection(classes)
    x = torch.cat([_graph_coordinates(classes, basis), _graph_coordinates(images, basis)])
    num_lists = max(1, min(round(knn.IVF_LISTS_PER_SQRT_N * len(x) ** 0.5), len(x) // 39))
    centroids = knn._kmeans(x, num_lists)
    curve = knn._calibration_curve(x, centroids, 20)
    nprobe = int(torch.searchsorted(curve, knn.RECALL_TARGET + knn.CALIBRATION_MARGIN))
    probes = knn._nearest_lists(x, centroids, nprobe)
    lists, ids, width = probes[:, 0].contiguous(), torch.arange(args.queries), 20 + 1 + knn.SLACK
    backends = {"torch-ivf": knn.TorchIVF(x, lists, probes, num_lists),
                "faiss-ivf": knn.FaissIVF(x, lists, probes, centroids)}
    knn.faiss.omp_set_num_threads(torch.get_num_threads())
    seconds: dict[str, list[float]] = {name: [] for name in backends}
    found = {}
    for _ in range(args.repeats):
        for name, backend in backends.items():
            start = time.perf_counter()
            found[name] = backend.search(ids, width)
            seconds[name].append(round(time.perf_counter() - start, 2))
    same = torch.equal(*(torch.sort(f[0], dim=1).values for f in found.values()))
    record = {"n": len(x), "d": x.shape[1], "lists": num_lists, "nprobe": nprobe, "queries": args.queries,
              "width": width, "torch_threads": torch.get_num_threads(), "seconds": seconds,
              "same_candidate_sets": same, "load_average_before": load_before,
              "load_average_after": [round(v, 2) for v in os.getloadavg()], "machine": lscpu()}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), file=sys.stderr)


if __name__ == "__main__":
    main()
