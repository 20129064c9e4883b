"""``reclip predict``: classify new images with a saved adapter (``AdaptedModel.predict``)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import checks, distributed
from ..data.datasets import GivenClasses
from ..errors import ReclipError
from ..io import refuse_overwriting_inputs, write_json
from ..method.adapter import ADAPTER_FILE, Adapter
from ..models.factory import load_model
from ..predictions import CSV_HEADER
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
    p.add_argument("--out", required=True, help="predictions CSV to write (never one of the inputs)")
    p.set_defaults(func=run)


def metrics_path(out: Path) -> Path:
    """Where predict's metrics go: never the predictions' own path."""
    return out.with_suffix(".metrics.json")


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = checks.path_argument(args.out, "out")
    if out.is_dir():
        raise ReclipError(f"--out {out} is a folder; pass a file name such as {out / 'predictions.csv'}")
    report = ReportFiles.of_predictions(out)
    outputs = [("--out", out), ("metrics file", metrics_path(out)), ("report", report.html),
               ("report inputs", report.inputs)]
    dataset_path = Path(args.dataset).expanduser()
    inputs = [("--dataset", dataset_path)] if dataset_path.is_file() else []
    inputs += [("--adapter", Path(args.adapter).expanduser()),
              ("--adapter", Path(args.adapter).expanduser() / ADAPTER_FILE)]
    if args.classnames is not None:
        inputs.append(("--classnames", Path(args.classnames).expanduser()))
    refuse_overwriting_inputs(outputs, inputs)  # before any work
    _refuse_foreign(out, metrics_path(out), report.html, report.inputs)
    settings = config_from_args(args)  # validates --batch-size and --workers
    adapter = Adapter.load(args.adapter)
    spec = args.model or adapter.meta["model"]
    pretrained = args.pretrained if args.model or args.pretrained else adapter.meta.get("pretrained")
    adapted = adapter.apply(load_model(spec, pretrained, args.device))
    _, dataset, _ = load_inputs(args, model=adapted.model,
                                classnames=GivenClasses(adapter.classnames, f"adapter {args.adapter}"))
    refuse_overwriting_inputs(outputs, [("image", p) for p in checks.dataset_inputs(dataset, [out.name])])
    predictions = adapted.predict(dataset, batch_size=settings.batch_size, workers=settings.workers)
    if not distributed.is_main():
        return
    predictions.save_csv(out)
    metrics = {"task": "predict", "adapter": str(args.adapter), "model": spec, "pretrained": pretrained,
               "dataset": dataset.spec, "n": len(predictions), **dataset.skipped_counts(predictions.skipped),
               **predictions.metrics(), "seconds": round(time.perf_counter() - start, 3)}
    write_json(metrics_path(out), metrics)
    write_report_inputs(report.inputs, predictions, dataset=dataset)
    write_report(report)
    print_table([(f"adapted ({adapter.mode})", metrics)])
    print(f"wrote {out}, {metrics_path(out)} and {report.html} ({metrics['n']} images, {metrics['skipped']} skipped)")


def _refuse_foreign(out: Path, metrics: Path, report: Path, report_inputs: Path) -> None:
    """Refuse to replace a file that no earlier ``reclip predict`` wrote."""
    if out.exists() and _first_line(out) != ",".join(CSV_HEADER):
        raise ReclipError(f"--out {out} exists and is not a predictions file of reclip; pass a new file name")
    try:
        ours = json.loads(metrics.read_text(encoding="utf-8")).get("task") == "predict"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        ours = False
    for path in (metrics, report, report_inputs):
        if path.exists() and not ours:
            raise ReclipError(f"{path} (where --out {out} puts its {path.name.split('.', 1)[1]}) exists and reclip "
                              "did not write it; pass another --out")


def _first_line(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return None
