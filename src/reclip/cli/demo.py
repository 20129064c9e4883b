"""``reclip demo``: the whole method on real pretrained weights, with no download.

Model: the bridge dual encoder (ImageNet EfficientNet-Lite0 + MiniLM, both shipped in pip
packages). Target: Fashion-MNIST test images (Debian's dataset-fashion-mnist package, or
torchvision's download). Runs zero-shot, label propagation alone (transductive) and full
ReCLIP on the same images and prints them side by side.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import distributed
from ..callbacks import PrintProgress
from ..data.benchmarks import benchmark_root
from ..data.datasets import load_dataset
from ..data.sampling import random_subset
from ..errors import ReclipError
from ..io import write_json
from ..method.config import ReclipConfig
from ..method.run import ReCLIP
from ..models.factory import load_model
from ..paths import system_package
from ..progress import heartbeat
from .common import check_epochs, print_table, safeguard_line

GET_DATA = (f"install it with `apt-get install {system_package('fashion_mnist')}` or pass --data-root DIR "
            "holding the Fashion-MNIST IDX files")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="zero-shot vs label propagation vs ReCLIP on Fashion-MNIST, offline",
                       description=__doc__)
    p.add_argument("--n", type=int, default=2000,
                   help="images of the Fashion-MNIST test set to adapt on (default 2000; 10000 for the "
                        "full test set)")
    p.add_argument("--out", default="reclip-demo", help="output folder (default: ./reclip-demo)")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--epochs", type=int, default=None, help="ReCLIP epochs (default: N // 5000 + 2)")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise ReclipError(f"--n must be positive; got {args.n}")
    check_epochs(args.epochs)
    configs = {"transductive": ReclipConfig(mode="transductive", workers=args.workers),
               "reclip": ReclipConfig(mode="reclip", epochs=args.epochs, workers=args.workers)}
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise ReclipError(f"--data-root {args.data_root} does not exist; {GET_DATA}")
    try:  # the data first: a machine without it fails in seconds, before the model is built
        dataset = load_dataset("fashion-mnist", root=benchmark_root("fashion_mnist", args.data_root))
    except ReclipError as exc:
        raise ReclipError(f"Fashion-MNIST is not on this machine: {GET_DATA} ({exc})") from None
    print("reclip demo: loading the bridge model (EfficientNet-Lite0 + MiniLM-L6)", flush=True)
    with heartbeat("loading the bridge model"):
        model = load_model("bridge", device=args.device)
    dataset.transform = model.preprocess
    dataset = random_subset(dataset, args.n)
    print(f"reclip demo: {model.name} on {len(dataset)} Fashion-MNIST test images")
    out = Path(args.out)
    results = {mode: ReCLIP(model, config).fit(dataset, out=out / mode, callbacks=[PrintProgress()])
               for mode, config in configs.items()}
    if not distributed.is_main():
        return
    table = [("zero-shot", results["reclip"].metrics["zero_shot"])]
    table += [(mode, {**r.metrics["final"], "seconds": r.metrics["seconds"]}) for mode, r in results.items()]
    summary = {"model": model.name, "dataset": "fashion-mnist", "n": results["reclip"].metrics["n"],
               "methods": dict(table)}
    write_json(out / "summary.json", summary)
    print(f"\nreclip demo: {summary['n']} Fashion-MNIST test images, {model.name}")
    print_table(table)
    if (line := safeguard_line(results["reclip"].metrics)) is not None:
        print(line)
    print(f"report: {out / 'reclip' / 'report.html'} (open it in a browser; curves in report.png); "
          f"everything else under {out}")
