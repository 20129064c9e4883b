"""``reclip predict``: classify new images with a saved adapter (``AdaptedModel.predict``)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import distributed
from ..errors import ReclipError
from ..io import write_json
from ..method.adapter import Adapter
from ..models.factory import load_model
from ..report import ReportFiles, write_report, write_report_inputs
from .common import add_data_options, config_from_args, load_inputs, print_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with an adapter saved by `reclip adapt`",
                       description="Loads the base model, applies the adapter and writes predictions "
                                   "(index,path,pred,pred_name,confidence) to --out, metrics to "
                                   "<out without suffix>.metrics.json and a report to <out without suffix>.report.html.")
    p.add_argument("--adapter", required=True, help="the --out folder of `reclip adapt`, or its adapter.safetensors")
    p.add_argument("--model", default=None, help="override the base model recorded in the adapter")
    p.add_argument("--pretrained", default=None, help="override the base weights recorded in the adapter")
    p.add_argument("--device", default=None)
    add_data_options(p, with_prompts=False)
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.set_defaults(func=run)


def metrics_path(out: Path) -> Path:
    """Where predict's metrics go: never the predictions' own path."""
    return out.with_suffix(".metrics.json")


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = Path(args.out)
    if out.is_dir():
        raise ReclipError(f"--out {out} is a folder; pass a file name such as {out / 'predictions.csv'}")
    settings = config_from_args(args)  # validates --batch-size and --workers
    adapter = Adapter.load(args.adapter)
    spec = args.model or adapter.meta["model"]
    pretrained = args.pretrained if args.model or args.pretrained else adapter.meta.get("pretrained")
    adapted = adapter.apply(load_model(spec, pretrained, args.device))
    _, dataset, _ = load_inputs(args, model=adapted.model, classnames=adapter.classnames)
    predictions = adapted.predict(dataset, batch_size=settings.batch_size, workers=settings.workers)
    if not distributed.is_main():
        return
    predictions.save_csv(out)
    metrics = {"task": "predict", "adapter": str(args.adapter), "model": spec, "pretrained": pretrained,
               "dataset": dataset.spec, "n": len(predictions), "skipped": len(predictions.skipped),
               **predictions.metrics(), "seconds": round(time.perf_counter() - start, 3)}
    write_json(metrics_path(out), metrics)
    files = ReportFiles.of_predictions(out)
    write_report_inputs(files.inputs, predictions, dataset=dataset)
    write_report(files)
    print_table([(f"adapted ({adapter.mode})", metrics)])
    print(f"wrote {out}, {metrics_path(out)} and {files.html} ({metrics['n']} images, {metrics['skipped']} skipped)")
