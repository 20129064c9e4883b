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
from ..data.benchmarks import benchmark_root
from ..errors import ReclipError
from ..io import write_json
from ..models.factory import load_model
from . import adapt
from .common import load_setup, out_dir
from .zeroshot import print_table

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
GET_DATA = "apt-get install dataset-fashion-mnist (or pass --data-root DIR holding the Fashion-MNIST IDX files)"


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


def fashion_mnist_root(data_root: str | None) -> str | None:
    """--data-root, else Debian's copy, else torchvision's default location (download online)."""
    if data_root is not None:
        if not Path(data_root).is_dir():
            raise ReclipError(f"--data-root {data_root} does not exist; {GET_DATA}")
        return data_root
    if DEBIAN_FASHION_MNIST.is_dir():
        return str(DEBIAN_FASHION_MNIST)
    return str(benchmark_root("fashion-mnist"))


def run(args: argparse.Namespace) -> None:
    out = out_dir(args.out)
    root = fashion_mnist_root(args.data_root)
    common = ["--model", "bridge", "--dataset", "fashion-mnist", "--data-root", root,
              "--max-images", str(args.n)]
    common += ["--device", args.device] if args.device else []
    common += ["--workers", str(args.workers)] if args.workers is not None else []
    common += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    parser = argparse.ArgumentParser()
    adapt.add_parser(parser.add_subparsers())
    runs = {mode: parser.parse_args(["adapt", *common, "--mode", mode, "--out", str(out / mode)])
            for mode in ("transductive", "reclip")}

    model = load_model("bridge", device=args.device)
    try:
        setup = load_setup(runs["reclip"], model=model)
    except ReclipError as exc:
        raise ReclipError(f"{exc} ({GET_DATA})") from None
    print(f"reclip demo: {model.name} on {len(setup.dataset)} Fashion-MNIST test images")
    # Label propagation first: ReCLIP then trains the same model in place.
    results = {mode: adapt.execute(margs, setup) for mode, margs in runs.items()}
    if not distributed.is_main():
        return
    table = [("zero-shot", results["reclip"]["zero_shot"])]
    table += [(mode, {**m["final"], "seconds": m["seconds"]}) for mode, m in results.items()]
    summary = {"model": model.name, "dataset": "fashion-mnist", "n": results["reclip"]["n"],
               "methods": {name: m for name, m in table}}
    write_json(out / "summary.json", summary)
    print(f"\nreclip demo: {summary['n']} Fashion-MNIST test images, {model.name}")
    print_table(table)
    print(f"report: {out / 'reclip' / 'report.png'}; everything else under {out}")
