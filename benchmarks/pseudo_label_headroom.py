"""Where the headroom is: how good the frozen features are against how good reclip's pseudo
labels are, on dev targets only (Fashion-MNIST TRAIN split; never the reported ones).

    python benchmarks/pseudo_label_headroom.py --seeds 0 1   # 16 dev targets x 2 samples, 2,000 images each

For every dev target sample it scores, by top-1 against the dev labels:

- ``zero_shot``, ``propagation`` and ``reclip``: the library's runs with the defaults, except
  the paper's graph (``image_edges="projected"``), which this study compares against;
- ``class_means_of_true_labels``: each image given the class whose mean frozen feature (over the
  target's own images, true labels) is nearest. A ceiling, not a method: what a classifier of
  reclip's V kind (nearest centroid on the frozen features, the bridge's default) would reach if
  its pseudo labels were all right;
- ``kmeans_K_vote``: spherical k-means (FAISS) into K clusters, each cluster named by the class
  with the largest summed zero-shot probability over its images: a label-free alternative to
  label propagation for finding the classes' clusters;
- ``propagation_dense`` and ``propagation_full_image_edges``: label propagation solved densely
  (exactly), first on reclip's graph (every edge in the projection space), then with the
  image-image edges taken in the full feature space and only the edges to class nodes in the
  projection space; ``zero_shot_plus_centroids_of_<that>``: zero-shot logits plus the logits of
  the nearest-centroid classifier on those labels, what reclip's head on the bridge is without
  T's training.

Writes benchmarks/results/pseudo_label_headroom.json.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as nnf

from reclip import ReCLIP, ReclipConfig, load_model
from reclip.bench import load_target
from reclip.io import write_json
from reclip.method.propagation import projection
from reclip.method.run import resolve_templates
from reclip.method.frozen import frozen_view
from reclip.method.zeroshot import LOGIT_SCALE

from dev_args import dev_parser, parse_dev_args

RESULTS = Path(__file__).parent / "results" / "pseudo_label_headroom.json"
CLUSTERS = (10, 30, 100)
GRAPHS = ("propagation_dense", "propagation_full_image_edges")
METHODS = ("zero_shot", "propagation", "reclip", "class_means_of_true_labels",
           *(f"kmeans_{k}_vote" for k in CLUSTERS), *GRAPHS, *(f"zero_shot_plus_centroids_of_{g}" for g in GRAPHS))


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C x D L2-normalised mean of the N x D features of each label."""
    return nnf.normalize(torch.zeros(num_classes, features.shape[1]).index_add_(0, labels, features), dim=1)


def dense_propagation(similarity: torch.Tensor, num_classes: int, k: int, alpha: float) -> torch.Tensor:
    """(N,) labels of the image nodes: docs/method.md step 2 on an (C + N) x (C + N) node
    similarity matrix (class nodes first), solved exactly."""
    s = similarity.clone().fill_diagonal_(-2.0)
    values, neighbours = s.topk(k, dim=1)
    a = torch.zeros_like(s).scatter_(1, neighbours, (values + 1) / 2)
    w = (a + a.T) / 2
    d = w.sum(1).clamp_min(1e-12).rsqrt()
    y = torch.zeros(len(s), num_classes)
    y[:num_classes] = torch.eye(num_classes)
    f = torch.linalg.solve(torch.eye(len(s)) - alpha * d[:, None] * w * d[None], y)
    return f[num_classes:].argmax(-1)


def graph_variants(features: torch.Tensor, text: torch.Tensor, k: int, alpha: float) -> dict[str, torch.Tensor]:
    """Pseudo labels (N,) of both node similarities of GRAPHS (N x D features, C x D text heads)."""
    c = len(text)
    projected = nnf.normalize(torch.cat([text, features]) @ projection(text), dim=1)
    reclips = projected @ projected.T
    full_image_edges = reclips.clone()
    full_image_edges[c:, c:] = features @ features.T
    return {name: dense_propagation(s, c, k, alpha)
            for name, s in zip(GRAPHS, (reclips, full_image_edges))}


def kmeans_vote(features: torch.Tensor, zero_shot: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    """(N,) class of each image's k-means cluster: the class with the largest summed zero-shot
    probability (N x C ``zero_shot``) over the cluster's images."""
    x = np.ascontiguousarray(features.numpy(), dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], clusters, niter=30, spherical=True, seed=seed, verbose=False,
                      min_points_per_centroid=1)
    km.train(x)
    assignment = torch.from_numpy(km.index.search(x, 1)[1][:, 0]).long()
    votes = torch.zeros(clusters, zero_shot.shape[1]).index_add_(0, assignment, zero_shot.float())
    return votes.argmax(-1)[assignment]


def target_row(model, name: str, n: int, seed: int) -> dict:
    dataset = load_target(name, None, n, seed)
    dataset.transform = model.preprocess
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = {mode: ReCLIP(model, ReclipConfig(mode=mode, seed=seed, image_edges="projected")).fit(dataset)
                for mode in ("zero-shot", "transductive", "reclip")}
    # the library's frozen view: the same features (from the cache), text classifier and templates as the runs
    view = frozen_view(model, dataset, resolve_templates(dataset, None, None), batch_size=64, workers=None, cache=True)
    features, labels = nnf.normalize(view.features.features.float(), dim=1), view.features.labels
    zero_shot = runs["zero-shot"].predictions.probs
    c = len(dataset.classnames)
    text = nnf.normalize(view.classifier, dim=1)
    used = runs["reclip"].metrics["config"]  # k and alpha as resolved for this model
    graphs = graph_variants(features, text, used["k"], used["alpha"])
    zero_shot_logits = LOGIT_SCALE * features @ text.T
    predicted = {"class_means_of_true_labels": (features @ class_means(features, labels, c).T).argmax(-1),
                 **{f"kmeans_{k}_vote": kmeans_vote(features, zero_shot, k, seed) for k in CLUSTERS},
                 **graphs,
                 **{f"zero_shot_plus_centroids_of_{g}": (zero_shot_logits + LOGIT_SCALE * features
                                                         @ class_means(torch.cat([text, features]),
                                                                       torch.cat([torch.arange(c), pl]), c).T).argmax(-1)
                    for g, pl in graphs.items()}}
    top1 = {"zero_shot": runs["zero-shot"].metrics["final"]["top1"],
            "propagation": runs["transductive"].metrics["final"]["top1"],
            "reclip": runs["reclip"].metrics["final"]["top1"],
            **{m: (p == labels).float().mean().item() for m, p in predicted.items()}}
    return {"target": name, "seed": seed, "top1": top1}


def main() -> None:
    args = parse_dev_args(dev_parser(__doc__, RESULTS))
    start = time.perf_counter()
    model = load_model("bridge")
    rows = []
    for name, seed in args.cells:
        rows.append(target_row(model, name, args.n, seed))
        print(f"{name:<28} {seed}  " + "  ".join(f"{m} {100 * v:5.1f}" for m, v in rows[-1]["top1"].items()),
              flush=True)
    summary = {}
    for m in METHODS:
        gains = [r["top1"][m] - r["top1"]["zero_shot"] for r in rows]
        summary[m] = {"mean_top1": sum(r["top1"][m] for r in rows) / len(rows),
                      "below_zero_shot": sum(g < 0 for g in gains), "worst_vs_zero_shot": min(gains)}
    write_json(args.out, {"n": args.n, "seeds": args.seeds, "targets": rows, "summary": summary,
                          "seconds": round(time.perf_counter() - start, 1)})
    for m, s in summary.items():
        print(f"{m:<28} mean top-1 {100 * s['mean_top1']:5.2f}  below zero-shot on {s['below_zero_shot']}/{len(rows)}"
              f"  worst {100 * s['worst_vs_zero_shot']:+.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
