"""`reclip zeroshot` end to end, and the one-line errors of the command line."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reclip.cli.main import main

FASHION = Path("/usr/share/datasets/fashion-mnist")


pytestmark = pytest.mark.usefixtures("private_cache")


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "reclip", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_zeroshot_on_class_folders(make_image_folder, tmp_path, capsys):
    data = make_image_folder({"red_apple": 4, "green_leaf": 3, "blue_sky": 5})
    (data / "blue_sky" / "broken.png").write_bytes(b"not a png at all")
    assert main(["zeroshot", "--model", "tiny", "--dataset", str(data), "--out", str(tmp_path / "out"),
                 "--workers", "0"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["task"] == "zeroshot" and metrics["model"] == "tiny"
    assert metrics["n"] == 12 and metrics["skipped"] == 1 and metrics["final"] == metrics["zero_shot"]
    preds = rows(tmp_path / "out" / "predictions.csv")
    assert len(preds) == 12
    assert set(preds[0]) == {"index", "path", "pred", "pred_name", "confidence"}
    assert {p["pred_name"] for p in preds} <= {"red apple", "green leaf", "blue sky"}
    assert all(Path(p["path"]).exists() and 1 / 3 <= float(p["confidence"]) <= 1 for p in preds)
    # top-1 is the share of rows whose predicted name is the image's folder
    correct = [Path(p["path"]).parent.name.replace("_", " ") == p["pred_name"] for p in preds]
    assert metrics["final"]["top1"] == pytest.approx(sum(correct) / 12)
    assert "zero-shot" in capsys.readouterr().out


def test_image_edges_flag_reaches_the_propagation(make_image_folder, tmp_path):
    data = make_image_folder({"red_apple": 8, "green_leaf": 8, "blue_sky": 8})
    args = ["adapt", "--model", "tiny", "--dataset", str(data), "--mode", "transductive", "--k", "5", "--workers", "0"]
    assert main(args + ["--out", str(tmp_path / "projected")]) == 0
    assert main(args + ["--out", str(tmp_path / "full"), "--image-edges", "full"]) == 0
    projected, full = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("projected", "full"))
    assert (projected["config"]["image_edges"], full["config"]["image_edges"]) == ("projected", "full")
    # the tiny random model's projection keeps 2 of its dimensions: the full features give another graph
    assert (tmp_path / "projected" / "predictions.csv").read_text() != (tmp_path / "full" / "predictions.csv").read_text()


def test_second_run_reads_the_feature_cache(make_image_folder, tmp_path):
    data = make_image_folder({"a": 2, "b": 2})
    args = ["zeroshot", "--model", "tiny", "--dataset", str(data), "--workers", "0"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    cached = list((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert main(args + ["--out", str(tmp_path / "two")]) == 0
    assert cached[0].stat().st_mtime_ns == stamp
    assert (tmp_path / "one" / "predictions.csv").read_text() == (tmp_path / "two" / "predictions.csv").read_text()
    assert main(args + ["--out", str(tmp_path / "three"), "--no-cache"]) == 0
    assert (tmp_path / "three" / "predictions.csv").read_text() == (tmp_path / "one" / "predictions.csv").read_text()


def test_flat_folder_without_labels_writes_no_label_metrics(make_image_folder, tmp_path):
    data = make_image_folder(5, name="flat")
    names = tmp_path / "classes.txt"
    names.write_text("cat|kitten\ndog\n")
    assert main(["zeroshot", "--model", "tiny", "--dataset", str(data), "--classnames", str(names),
                 "--out", str(tmp_path / "out"), "--workers", "0"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["final"] == {} and metrics["zero_shot"] == {}
    assert {p["pred_name"] for p in rows(tmp_path / "out" / "predictions.csv")} <= {"cat", "dog"}


@pytest.mark.real_data
@pytest.mark.skipif(not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_zeroshot_scores_all_fashion_mnist_test_images(tmp_path):
    assert main(["zeroshot", "--model", "tiny", "--dataset", "fashion-mnist", "--data-root", str(FASHION),
                 "--out", str(tmp_path / "out"), "--batch-size", "500", "--workers", "1"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 10_000 and metrics["skipped"] == 0
    preds = rows(tmp_path / "out" / "predictions.csv")
    assert [int(p["index"]) for p in preds] == list(range(10_000))
    # Fashion-MNIST's test set has 1,000 images per class
    assert metrics["final"]["mean_per_class_recall"] == pytest.approx(metrics["final"]["top1"], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["zeroshot", "--model", "tiny", "--dataset", "/no/such/dir"], "/no/such/dir does not exist"),
    (["zeroshot", "--model", "no-such-net", "--dataset", "cifar10"], "unknown model 'no-such-net'"),
    (["adapt", "--model", "tiny", "--dataset", "/no/such/dir", "--epochs", "-1"], "--epochs must be at least 1; got -1"),
    (["adapt", "--model", "tiny", "--dataset", "/no/such/dir", "--alpha", "1.5"], "--alpha must be in (0, 1); got 1.5"),
    (["adapt", "--model", "tiny", "--dataset", "/no/such/dir", "--lr-v", "-1"], "--lr-v must be in [0, 10]; got -1"),
    (["adapt", "--model", "tiny", "--dataset", "/no/such/dir", "--workers", "-1"], "--workers must be at least 0"),
    (["adapt", "--model", "tiny", "--dataset", "/no/such/dir", "--weight-decay", "inf"],
     "--weight-decay must be a finite number; got inf"),
    (["zeroshot", "--model", "tiny", "--dataset", "/no/such/dir", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["predict", "--adapter", "/no/such/adapter", "--dataset", "/no/such/dir"], "adapter /no/such/adapter"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("reclip: error:") and message in lines[0], err


def test_a_user_error_in_a_fresh_process_prints_no_traceback(tmp_path):
    result = run_cli("zeroshot", "--model", "tiny", "--dataset", "/no/such/dir", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("reclip: error:") and "Traceback" not in result.stderr


def test_class_count_mismatch_is_a_user_error(make_image_folder, tmp_path, capsys):
    data = make_image_folder({"a": 1, "b": 1, "c": 1})
    names = tmp_path / "names.txt"
    names.write_text("one\ntwo\n")
    code = main(["zeroshot", "--model", "tiny", "--dataset", str(data), "--classnames", str(names),
                 "--out", str(tmp_path / "out"), "--workers", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("reclip: error:") and "lists 2 classes but folder" in err and "has 3 class folders" in err, err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_import_and_norm_parameter_counts():
    out = subprocess.run([sys.executable, "-c", "import reclip; m = reclip.load_model('tiny'); "
                          "print(len(m.image_norm_parameters()), len(m.text_norm_parameters()))"],
                         capture_output=True, text=True, timeout=120)
    image, text = map(int, out.stdout.split())
    assert image > 0 and text > 0


def test_demo_without_fashion_mnist_names_the_package_and_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECLIP_SYSTEM_DATA", str(tmp_path / "no-system-data"))
    monkeypatch.setenv("RECLIP_DATA", str(tmp_path / "no-data-home"))
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("reclip: error: Fashion-MNIST is not on this machine")
    assert "apt-get install dataset-fashion-mnist" in err and "--data-root" in err
    assert not (tmp_path / "demo").exists()


def test_bad_device_is_named_as_such(tmp_path, capsys):
    assert main(["zeroshot", "--model", "tiny", "--device", "cdua", "--dataset", "/no/such/dir",
                 "--out", str(tmp_path / "out")]) == 2
    assert "device 'cdua' is not a device name" in capsys.readouterr().err
