"""``reclip report``: rebuild report.html (and report.png) from the files of a finished run."""
from __future__ import annotations

import argparse

from ..report import write_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.html and report.png of a finished run",
                       description="Rebuilds report.html (and, for training runs, report.png) from the files a run "
                                   "left: metrics.json, predictions.csv and report_inputs.json. RUN is the --out "
                                   "folder of reclip adapt, zeroshot or demo (demo: one of its sub-folders), or the "
                                   "predictions CSV of reclip predict.")
    p.add_argument("run", metavar="RUN", help="a run folder, or the --out CSV of reclip predict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    for path in write_report(args.run):
        print(f"wrote {path}")
