"""``reclip bench`` on the tiny model: every output file, resume cell by cell, the paper suite's layout."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import reclip
from reclip.bench import (Bench, BenchWarning, CellScores, bootstrap_interval, intervals, load_target, make_cells,
                          markdown)
from reclip.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import make_clustered_folder  # noqa: E402
from test_paper_benchmarks import BUILDERS  # noqa: E402


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> list[str]:
    model = reclip.load_model("tiny", device="cpu")
    base = tmp_path_factory.mktemp("targets")
    return [str(make_clustered_folder(base / "easy", model, per_class=15, noise=30.0, seed=0)),
            str(make_clustered_folder(base / "hard", model, per_class=15, noise=70.0, seed=1))]


def test_bench_writes_every_output_and_resumes_cell_by_cell(targets, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--targets", *targets, "--models", "tiny", "--methods", "zero-shot", "reclip",
            "--n", "0", "--workers", "0", "--out", str(out)]
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())
    assert [(Path(r["dataset"]).name, r["method"]) for r in records] == [
        ("easy", "zero-shot"), ("easy", "reclip"), ("hard", "zero-shot"), ("hard", "reclip")]
    for r in records:
        assert set(r) >= {"dataset", "model", "pretrained", "method", "n", "acc1", "acc5", "mean_per_class_recall",
                          "ece", "seconds"} and r["model"] == "tiny" and r["n"] == 60
    # the zero-shot cell of a target is the zero-shot block of its reclip run
    run = json.loads((out / "runs" / make_cells([targets[0]], ["tiny"], ["reclip"])[0].key / "metrics.json")
                     .read_text())
    assert records[0]["acc1"] == pytest.approx(run["zero_shot"]["top1"]) and records[1]["acc1"] == run["final"]["top1"]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["acc1"]) for r in rows] == pytest.approx([r["acc1"] for r in records])
    table = (out / "results.md").read_text()
    assert "| **mean** | tiny |" in table and f"{100 * (records[0]['acc1'] + records[2]['acc1']) / 2:.2f} ± " in table
    assert "reclip − zero-shot" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # per-image predictions next to each record: they give the record's top-1
    for r in records:
        assert isinstance(r["fell_back"], bool) if r["method"] == "reclip" else r["fell_back"] is None
        scores = CellScores.load(out / "cells" / r["predictions"])
        assert len(scores.pred) == 60 and scores.correct.mean() == pytest.approx(r["acc1"])
    rows = json.loads((out / "intervals.json").read_text())
    mean_gain = next(x for x in rows if x["target"] == "mean" and x["method"] == "reclip"
                     and x["baseline"] == "zero-shot")
    assert mean_gain["strata"] == 2 and mean_gain["n"] == 120
    assert mean_gain["estimate"] == pytest.approx(
        (records[1]["acc1"] - records[0]["acc1"] + records[3]["acc1"] - records[2]["acc1"]) / 2)
    assert mean_gain["low"] <= mean_gain["estimate"] <= mean_gain["high"]

    # a rerun keeps finished cells and runs only the missing one
    cells = sorted((out / "cells").glob("*.json"))
    assert len(cells) == 4 and len(list((out / "cells").glob("*.npz"))) == 4
    stamps = {c: c.stat().st_mtime_ns for c in cells}
    missing = cells[1]
    missing.unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("bench cell ") == 1
    assert all(c.stat().st_mtime_ns == stamps[c] for c in cells if c != missing)
    again = json.loads((out / "results.json").read_text())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(again) == strip(records)

    # a damaged (here: empty) record or predictions file is a missing cell: one warning names it, the cell reruns
    cells[2].write_text("")
    Path(str(cells[3])[:-5] + ".npz").write_bytes(b"PK\x03\x04 cut short")
    capsys.readouterr()
    with pytest.warns(BenchWarning) as caught:
        assert main(args) == 0
    assert capsys.readouterr().out.count("bench cell ") == 2
    named = sorted(str(w.message).split()[3] for w in caught if w.category is BenchWarning)
    assert named == sorted([str(cells[2]), str(cells[3])[:-5] + ".npz"])
    assert strip(json.loads((out / "results.json").read_text())) == strip(records)


def test_paper_suite_reads_generated_benchmark_folders(tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("fer2013", "aid"):
        BUILDERS[name](data / name, None)
    out = tmp_path / "paper"
    assert main(["bench", "--suite", "paper", "--targets", "fer2013", "aid", "--models", "tiny",
                 "--methods", "zero-shot", "transductive", "--data-root", str(data), "--n", "0", "--workers", "0",
                 "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["method"], r["n"]) for r in records] == [
        ("fer2013", "zero-shot", 6), ("fer2013", "transductive", 6), ("aid", "zero-shot", 6),
        ("aid", "transductive", 6)]


def test_bench_errors_are_one_line(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "b")]) == 2
    assert "pass --suite offline|paper, or --targets and --models" in capsys.readouterr().err
    assert main(["bench", "--targets", "x", "--models", "tiny", "--samples", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--samples must be at least 1" in capsys.readouterr().err
    assert main(["bench", "--targets", "x", "--models", "tiny", "--samples", "2", "--n", "0",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--samples above 1 needs --n" in capsys.readouterr().err
    with pytest.raises(reclip.ReclipError, match="methods: unknown magic"):
        make_cells(["x"], ["tiny"], ["magic"])


def test_markdown_mean_row_is_over_targets():
    records = [{"dataset": d, "model": "m", "method": "a", "acc1": a, "mean_per_class_recall": a, "ece": 0.1,
                "seconds": 1.0} for d, a in (("x", 0.5), ("y", 0.7))]
    assert "| **mean** | m | **60.00** |" in markdown(records)


def test_bootstrap_matches_a_hand_computed_case():
    # one stratum, differences (0, 1): the resampled mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1
    one = bootstrap_interval([np.array([1.0, 1.0])], [np.array([1.0, 0.0])], resamples=4000)
    assert (one.estimate, one.low, one.high) == (0.5, 0.0, 1.0) and one.verdict == "within noise"
    # a second stratum with constant difference 1: the mean over strata is (1 + {0, 1/2, 1}) / 2
    two = bootstrap_interval([np.array([1.0, 1.0]), np.array([1.0, 1.0])],
                             [np.array([0.0, 0.0]), np.array([1.0, 0.0])], resamples=4000)
    assert (two.estimate, two.low, two.high) == (0.75, 0.5, 1.0) and two.verdict == "win"
    # 400 paired images, 60 won and 20 lost: mean 0.1, standard error sqrt((80/400 - 0.1^2) / 400)
    a = np.r_[np.ones(60), np.zeros(20), np.zeros(320)]
    b = np.r_[np.zeros(60), np.ones(20), np.zeros(320)]
    normal = bootstrap_interval([a], [b], resamples=20000)
    half = 1.96 * np.sqrt((80 / 400 - 0.01) / 400)
    assert normal.estimate == pytest.approx(0.1)
    assert normal.low == pytest.approx(0.1 - half, abs=0.006) and normal.high == pytest.approx(0.1 + half, abs=0.006)


def test_identical_predictions_give_the_interval_zero_zero():
    correct = np.random.default_rng(0).random(300) < 0.4
    same = bootstrap_interval([correct, correct[:100]], [correct.copy(), correct[:100].copy()])
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and same.verdict == "within noise"


def test_samples_of_a_dataset_are_disjoint(targets):
    drawn = [load_target(targets[0], None, 15, 0, s) for s in range(4)]  # 60 images: four disjoint sets of 15
    paths = [set(d.paths) for d in drawn]
    assert all(len(p) == 15 for p in paths) and len(set().union(*paths)) == 60
    assert paths[0] == set(reclip.random_subset(reclip.load_dataset(targets[0]), 15, 0).paths)
    with pytest.raises(reclip.ReclipError, match="fewer --samples"):
        load_target(targets[0], None, 15, 0, 4)


def test_bench_object_runs_from_python(targets, tmp_path):
    records = Bench(tmp_path / "b", n=20, workers=0).run(make_cells(targets[:1], ["tiny"], ["transductive"]))
    assert len(records) == 1 and records[0]["n"] == 20


def test_intervals_average_only_cells_that_every_method_finished():
    def cell(dataset, method, correct):
        pred = np.array(correct, dtype=np.int64)
        record = {"dataset": dataset, "model": "m", "method": method, "sample": 0, "acc1": pred.mean()}
        return record, CellScores(index=np.arange(4), label=np.ones(4, np.int64), pred=pred,
                                  confidence=np.ones(4, np.float32))

    cells = [cell("x", "zero-shot", [1, 0, 0, 0]), cell("x", "reclip", [1, 1, 0, 0]),
             cell("y", "zero-shot", [1, 1, 1, 1])]  # reclip has not finished y yet
    rows = {(r.target, r.method, r.baseline): r for r in intervals([c[0] for c in cells], [c[1] for c in cells])}
    assert rows[("mean", "zero-shot", None)].interval.estimate == 0.25  # x only, like reclip's
    assert rows[("mean", "reclip", "zero-shot")].interval.estimate == 0.25 and ("y", "zero-shot", None) not in rows


def test_the_fallback_line_names_the_method_and_each_cell_once():
    from reclip.bench.tables import markdown

    record = {"model": "bridge", "pretrained": None, "sample": 1, "acc1": 0.5, "acc5": 0.9,
              "mean_per_class_recall": 0.5, "ece": 0.1, "seconds": 1.0, "dataset": "clean"}
    records = [{**record, "method": "reclip", "fell_back": True},
               {**record, "method": "reclip-v-frozen", "fell_back": True},
               {**record, "method": "transductive", "fell_back": None}]
    line = next(t for t in markdown(records).splitlines() if t.startswith("The safeguard fell back"))
    assert line == ("The safeguard fell back to zero-shot on: reclip / clean / bridge / sample 1, "
                    "reclip-v-frozen / clean / bridge / sample 1.")
