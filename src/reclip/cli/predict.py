"""``reclip predict``: classify new images with a saved adapter (the combined ReCLIP head)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..errors import ReclipError
from .. import distributed
from ..features import default_workers, encode_dataset
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

    # one pass: each batch through the frozen image tower and through V's (B x 2D rows)
    both = encode_dataset(lambda images: torch.cat(adapted.encode(images), dim=1), model.device, setup.dataset,
                          list(range(len(setup.dataset))), batch_size=args.batch_size,
                          workers=default_workers() if args.workers is None else args.workers, desc="predict")
    if len(both.indices) == 0:
        raise ReclipError(f"no readable image in {setup.dataset.spec}")
    f_frozen, f_v = both.features.chunk(2, dim=1)
    probs = adapted.logits(f_frozen, f_v).softmax(dim=-1)
    if not distributed.is_main():
        return
    write_predictions(out, both.indices, probs, adapter.classnames, setup.dataset.paths)
    metrics = {"task": "predict", "adapter": str(args.adapter), "model": spec, "pretrained": pretrained,
               "dataset": setup.dataset.spec, "n": len(both.indices), "skipped": len(both.skipped),
               **classification_metrics(probs, both.labels), "seconds": round(time.perf_counter() - start, 3)}
    write_json(out.with_suffix(".json"), metrics)
    print_table([(f"adapted ({adapter.mode})", metrics)])
    print(f"wrote {out} ({metrics['n']} images, {metrics['skipped']} skipped)")
