"""``reclip predict``: classify new images with a saved adapter (the combined ReCLIP head)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import ReclipError
from ..features import make_loader
from ..io import write_json, write_predictions
from ..method.adapter import Adapter
from ..metrics import classification_metrics
from ..models.factory import load_model
from .common import add_data_options, load_setup
from .zeroshot import print_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with an adapter saved by `reclip adapt`",
                       description="Loads the base model, applies the adapter and writes predictions "
                                   "(index,path,pred,pred_name,confidence) to --out.")
    p.add_argument("--adapter", required=True, help="the --out folder of `reclip adapt`, or its adapter.safetensors")
    p.add_argument("--model", default=None, help="override the base model recorded in the adapter")
    p.add_argument("--pretrained", default=None, help="override the base weights recorded in the adapter")
    p.add_argument("--device", default=None)
    add_data_options(p, with_prompts=False)
    p.add_argument("--out", required=True, help="predictions CSV to write (metrics go next to it as .json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = Path(args.out)
    if out.is_dir():
        raise ReclipError(f"--out {out} is a folder; pass a file name such as {out / 'predictions.csv'}")
    adapter = Adapter.load(args.adapter)
    spec = args.model or adapter.meta["model"]
    pretrained = args.pretrained if args.model or args.pretrained else adapter.meta["pretrained"]
    model = load_model(spec, pretrained, args.device)
    adapted = adapter.apply(model)
    if args.classnames is None:
        args.classnames = adapter.classnames  # the adapter's classes define the head
    setup = load_setup(args, model=model)

    frozen, adapted_f, indices, labels, skipped = [], [], [], [], []
    loader = make_loader(setup.dataset, args.batch_size, 0 if args.workers is None else args.workers)
    for images, idx, labs, skip in tqdm(loader, desc="predict", unit="batch", leave=False):
        skipped += skip
        if len(idx):
            f0, fv = adapted.encode(images.to(model.device))
            frozen.append(f0)
            adapted_f.append(fv)
            indices.append(idx)
            labels.append(labs)
    if not indices:
        raise ReclipError(f"no readable image in {setup.dataset.spec}")
    indices_t, labels_t = torch.cat(indices), torch.cat(labels)
    probs = adapted.logits(torch.cat(frozen), torch.cat(adapted_f)).softmax(dim=-1)
    write_predictions(out, indices_t, probs, adapter.classnames, setup.dataset.paths)
    metrics = {"task": "predict", "adapter": str(args.adapter), "model": spec, "pretrained": pretrained,
               "dataset": setup.dataset.spec, "n": len(indices_t), "skipped": len(skipped),
               **classification_metrics(probs, labels_t), "seconds": round(time.perf_counter() - start, 3)}
    write_json(out.with_suffix(".json"), metrics)
    print_table([(f"adapted ({adapter.mode})", metrics)])
    print(f"wrote {out} ({metrics['n']} images, {metrics['skipped']} skipped)")
