"""Ablation: the ReCLIP loop with V's image tower frozen, on the bridge model and Fashion-MNIST.

    python benchmarks/v_frozen.py [--split train] [--n 10000]

Same loop as ``reclip adapt --mode reclip`` (reclip/method/reclip.py), except that V's norm
affines never train: V's features stay the frozen ones, while V's classifier still follows the
label-propagation centroids of those features each epoch and T trains on the agreed pseudo
labels. Needs only the cached frozen features (minutes, not the half hour of a full run).
It measures how much V's training adds over V's centroid iteration alone: on the TRAIN split it
was the evidence for V's loss scaling (README, "How the defaults were chosen"). Writes
benchmarks/results/v_frozen.json (one entry per split and size).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reclip.cli.common import load_setup
from reclip.features import extract_features
from reclip.io import write_json
from reclip.method.propagation import label_propagation
from reclip.method.reclip import (ReclipConfig, combined_logits, configure_model, initial_state, make_optimizer,
                                  text_heads, train_pass)

RESULTS = Path(__file__).parent / "results" / "v_frozen.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    setup = load_setup(argparse.Namespace(
        model="bridge", pretrained=None, device=None, dataset="fashion-mnist", data_root=args.data_root,
        split=args.split, max_images=args.n, templates=None, classnames=None, batch_size=64, strict=False))
    model, dataset, templates = setup.model, setup.dataset, setup.templates
    start = time.perf_counter()
    frozen = extract_features(model, dataset)
    x, labels = frozen.features, frozen.labels
    config = ReclipConfig(mode="t-only")  # trains T only; V is emulated below on frozen features
    _, params_t = configure_model(model, config)
    opt_t = make_optimizer(params_t, config.lr_t, config)
    heads = initial_state(model, dataset.classnames, templates).heads
    acc = lambda predicted: round((predicted == labels).float().mean().item(), 4)  # noqa: E731
    history = []
    epochs = ReclipConfig().num_epochs(len(x))
    for epoch in range(epochs):
        logits = combined_logits(x, x, heads.t_classifier, heads.v_classifier, "reclip")
        lp_t = label_propagation(x, heads.t_full)
        lp_v = label_propagation(x, heads.v_classifier)
        heads.v_classifier = lp_v.centroids.float()
        agree = lp_t.labels == lp_v.labels
        history.append({"epoch": epoch, "top1": acc(logits.argmax(1)), "pseudo_label_acc_t": acc(lp_t.labels),
                        "pseudo_label_acc_v": acc(lp_v.labels), "agreement": round(agree.float().mean().item(), 4)})
        print(history[-1], flush=True)
        train_pass(model, dataset, dataset.classnames, frozen, lp_t.labels, lp_v.labels, heads, templates,
                   config, epoch, None, opt_t)
        heads.t_classifier, heads.t_full = text_heads(model, dataset.classnames, templates)
    logits = combined_logits(x, x, heads.t_classifier, heads.v_classifier, "reclip")
    final = {"top1": acc(logits.argmax(1)), "top1_t": acc((x @ heads.t_classifier.T).argmax(1)),
             "top1_v": acc((x @ heads.v_classifier.T).argmax(1))}
    print("final", final)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[f"{args.split}, n={len(x)}"] = {
        "epochs": history, "final": final, "seconds": round(time.perf_counter() - start, 1),
        "command": f"python benchmarks/v_frozen.py --split {args.split} --n {args.n}"}
    write_json(args.out, results)


if __name__ == "__main__":
    main()
