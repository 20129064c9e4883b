"""The ReCLIP loop end to end on the tiny model: what trains, what it writes, predict, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import reclip
from reclip.cli.main import main
from reclip.features import extract_features
from reclip.method.adapter import Adapter
from reclip.method.reclip import ReclipConfig, adapt

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import make_clustered_folder  # noqa: E402

TEMPLATES = ["a photo of a {}."]


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Path:
    """4 classes x 25 noisy copies of a prototype: zero-shot near chance, clear clusters."""
    model = reclip.load_model("tiny", device="cpu")
    return make_clustered_folder(tmp_path_factory.mktemp("domain") / "images", model, noise=40.0, seed=0)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def templates_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "templates.txt"
    path.write_text("\n".join(TEMPLATES) + "\n")
    return path


def run_library(domain: Path, mode: str, epochs: int = 2):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    frozen = extract_features(model, dataset, workers=0, use_cache=False)
    config = ReclipConfig(mode=mode, epochs=epochs, k=10, workers=0)
    state, _, logits = adapt(model, dataset, frozen, TEMPLATES, config)
    return model, before, state, logits, frozen


def changed(model, before) -> set[str]:
    return {n for n, p in model.module.named_parameters() if not torch.equal(p, before[n])}


def names_of(model, params) -> set[str]:
    ids = {id(p): n for n, p in model.module.named_parameters()}
    return {ids[id(p)] for p in params}


@pytest.mark.parametrize("mode", ["reclip", "v-only", "t-only"])
def test_only_the_trained_branch_norm_affines_change(domain, mode):
    model, before, _, _, _ = run_library(domain, mode)
    image_norms = names_of(model, model.image_norm_parameters())
    text_norms = names_of(model, model.text_norm_parameters())
    expected = (image_norms if mode != "t-only" else set()) | (text_norms if mode != "v-only" else set())
    diff = changed(model, before)
    assert diff and diff <= expected
    # almost every trained affine moves (a few may receive no gradient, e.g. an unused bias)
    assert len(diff) >= 0.5 * len(expected)
    assert all(not p.requires_grad for n, p in model.module.named_parameters() if n not in expected)


def test_self_training_improves_on_zero_shot(domain):
    _, _, state, logits, frozen = run_library(domain, "reclip", epochs=4)
    history = state.history
    labels = frozen.labels
    final_top1 = (logits.argmax(1) == labels).float().mean().item()
    assert final_top1 >= history[0]["top1"] + 0.15
    # T's pseudo labels and its classifier improve as its text norms adapt
    assert history[-1]["pseudo_label_acc_t"] >= history[0]["pseudo_label_acc_t"]
    assert history[-1]["top1_t"] > history[0]["top1_t"]
    # at epoch 0 both branches propagate the same frozen features: they agree everywhere
    assert history[0]["agreement"] == 1.0 and all(0 < h["agreement"] <= 1 for h in history)


@pytest.fixture(scope="module")
def adapted_run(domain, templates_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["adapt", "--model", "tiny", "--dataset", str(domain), "--templates", str(templates_file),
                 "--epochs", "2", "--k", "10", "--workers", "0", "--out", str(out)]) == 0
    return out


def test_adapt_writes_every_output(adapted_run):
    out = adapted_run
    for name in ("metrics.json", "predictions.csv", "adapter.safetensors", "report.png",
                 "checkpoint/state.safetensors"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "adapt" and m["mode"] == "reclip" and m["n"] == 100
    assert set(m["zero_shot"]) >= {"top1", "top5", "mean_per_class_recall", "ece"}
    assert set(m["final"]) >= {"top1", "top1_t", "top1_v", "mean_per_class_recall", "ece"}
    assert [e["epoch"] for e in m["epochs"]] == [0, 1]
    assert set(m["epochs"][0]) >= {"top1", "top1_t", "top1_v", "pseudo_label_acc_t", "pseudo_label_acc_v",
                                   "agreement", "loss_t", "loss_v", "seconds"}
    # frozen features once, V evaluated after each of its 2 training passes, and each training
    # pass runs forward and backward on the agreed samples only
    trained = sum(e["agreed_trained"] for e in m["epochs"]) / 100
    assert m["epochs"][0]["agreed_trained"] == 100 and m["epochs"][1]["agreed_trained"] < 100
    assert m["passes"] == pytest.approx({"image_forward": 3.0 + trained, "image_backward": trained})
    assert m["config"]["v_loss"] == ReclipConfig().v_loss == "reference" and m["peak_memory_mb"] > 0
    adapter = Adapter.load(out)
    assert adapter.meta["model"] == "tiny" and adapter.meta["templates"] == TEMPLATES
    assert adapter.v_classifier.shape == (4, 64) and adapter.image_norms and adapter.text_norms


def test_predict_with_the_adapter_reproduces_the_run(adapted_run, domain, tmp_path):
    pred = tmp_path / "p.csv"
    assert main(["predict", "--adapter", str(adapted_run), "--dataset", str(domain), "--out", str(pred),
                 "--workers", "0"]) == 0
    assert pred.read_text() == (adapted_run / "predictions.csv").read_text()


def test_predict_rejects_a_dataset_with_other_classes(adapted_run, make_image_folder, tmp_path, capsys):
    other = make_image_folder({"x": 1, "y": 1})
    assert main(["predict", "--adapter", str(adapted_run), "--dataset", str(other),
                 "--out", str(tmp_path / "p.csv"), "--workers", "0"]) == 2
    assert "reclip: error:" in capsys.readouterr().err


def test_transductive_mode_writes_both_metric_blocks(domain, templates_file, tmp_path):
    out = tmp_path / "out"
    assert main(["adapt", "--mode", "transductive", "--model", "tiny", "--dataset", str(domain),
                 "--templates", str(templates_file), "--k", "10", "--workers", "0", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "transductive" and m["zero_shot"]["top1"] <= 0.3
    assert m["final"]["top1"] > m["zero_shot"]["top1"] + 0.2
    assert len((out / "predictions.csv").read_text().splitlines()) == 101


def _cli(domain: Path, templates_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reclip", "adapt", "--model", "tiny", "--dataset", str(domain),
            "--templates", str(templates_file), "--epochs", "3", "--k", "10", "--workers", "0",
            "--out", str(out), *extra]


def _wait_for_epoch(out: Path, proc: subprocess.Popen, epochs_done: int) -> None:
    """Wait until the checkpoint records ``epochs_done`` finished epochs (the next one is running)."""
    from safetensors import safe_open
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        ckpt = out / "checkpoint" / "state.safetensors"
        if ckpt.exists():
            with safe_open(str(ckpt), framework="pt") as f:
                if json.loads(f.metadata()["reclip"])["epoch"] >= epochs_done:
                    return
        time.sleep(0.05)
    raise AssertionError("the run never reached the epoch to interrupt")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_to_identical_predictions(domain, templates_file, tmp_path, sig):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    full = tmp_path / "full"
    subprocess.run(_cli(domain, templates_file, full), check=True, capture_output=True, env=env, timeout=300)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli(domain, templates_file, cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    _wait_for_epoch(cut, proc, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert not (cut / "predictions.csv").exists() and not list(cut.rglob("*.tmp"))
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "--resume" in err
    resumed = subprocess.run(_cli(domain, templates_file, cut, "--resume"), capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    assert (cut / "predictions.csv").read_bytes() == (full / "predictions.csv").read_bytes()
    epochs_full = json.loads((full / "metrics.json").read_text())["epochs"]
    epochs_cut = json.loads((cut / "metrics.json").read_text())["epochs"]
    timing = ("seconds", "train_images_per_s", "decode_images_per_s")
    strip = lambda es: [{k: v for k, v in e.items() if k not in timing} for e in es]  # noqa: E731
    assert strip(epochs_cut) == strip(epochs_full)


def test_resume_with_other_settings_is_refused(adapted_run, domain, templates_file, capsys):
    code = main(["adapt", "--model", "tiny", "--dataset", str(domain), "--templates", str(templates_file),
                 "--epochs", "2", "--k", "7", "--workers", "0", "--out", str(adapted_run), "--resume"])
    assert code == 2 and "other settings (config)" in capsys.readouterr().err
