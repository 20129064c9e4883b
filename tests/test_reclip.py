"""The ReCLIP loop end to end on the tiny model: what trains, what it writes, predict, resume."""
from __future__ import annotations

import contextlib
import io
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
from reclip.method.adapter import Adapter


TEMPLATES = ["a photo of a {}."]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def templates_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "templates.txt"
    path.write_text("\n".join(TEMPLATES) + "\n")
    return path


def run_library(domain: Path, mode: str, epochs: int = 2, stages=None, **settings):
    """A run of the tiny model; the safeguard is off unless ``settings`` set it (these tests are
    about training: a fallback to zero-shot would hide what it did)."""
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    if mode == "reclip":
        settings = {"safeguard": 0.0, "safeguard_gain": -1.0, **settings}
    config = reclip.ReclipConfig(mode=mode, epochs=epochs, k=10, workers=0, cache=False, **settings)
    result = reclip.ReCLIP(model, config, stages=stages).fit(dataset, TEMPLATES)
    return model, before, result


def adapted_parameters(model, result) -> dict[str, torch.Tensor]:
    """The model's parameters with the run's adapter applied (V's image norms swapped in)."""
    adapter = result.adapter
    adapter.apply(model)
    named = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    by_id = {id(p): n for n, p in model.module.named_parameters()}
    for key, p in model.named_image_norm_parameters().items():
        if key in adapter.image_norms:
            named[by_id[id(p)]] = adapter.image_norms[key]
    return named


@pytest.mark.parametrize("mode", ["reclip", "v-only", "t-only"])
def test_only_the_trained_branch_norm_affines_change(domain, mode):
    model, before, result = run_library(domain, mode)
    assert all(torch.equal(p, before[n]) for n, p in model.module.named_parameters()), "fit must restore the model"
    image_norms = {n for n, p in model.module.named_parameters() if any(p is q for q in model.image_norm_parameters())}
    text_norms = {n for n, p in model.module.named_parameters() if any(p is q for q in model.text_norm_parameters())}
    expected = (image_norms if mode != "t-only" else set()) | (text_norms if mode != "v-only" else set())
    after = adapted_parameters(model, result)
    diff = {n for n in before if not torch.equal(after[n], before[n])}
    assert diff and diff <= expected
    # almost every trained affine moves (a few may receive no gradient, e.g. an unused bias)
    assert len(diff) >= 0.5 * len(expected)


def test_v_tower_frozen_trains_no_image_norm_but_v_still_follows_its_centroids(domain):
    _, _, frozen_v = run_library(domain, "reclip", v_tower="frozen")
    assert frozen_v.adapter.image_norms == {} and frozen_v.adapter.text_norms
    assert "loss_v" not in frozen_v.history[0] and frozen_v.metrics["passes"]["image_backward"] == 0
    # V's classifier moved away from the text classifier it started from
    assert not torch.allclose(frozen_v.adapter.v_classifier, frozen_v.adapter.t_classifier, atol=1e-3)


def test_v_tower_auto_trains_a_layernorm_tower_and_freezes_a_batchnorm_one(domain, monkeypatch):
    config = reclip.ReclipConfig()
    assert config.v_tower == "auto"
    assert config.for_model(contrastive=True).v_tower == "train"
    assert config.for_model(contrastive=False, image_norm="layernorm").v_tower == "train"
    assert config.for_model(contrastive=True, image_norm="batchnorm").v_tower == "frozen"
    assert reclip.ReclipConfig(v_tower="train").for_model(False, "batchnorm").v_tower == "train"
    assert (config.alpha, config.for_model(True).alpha, config.for_model(False).alpha) == (None, 0.99, 0.95)
    assert reclip.ReclipConfig(alpha=0.5).for_model(contrastive=False).alpha == 0.5
    assert (config.image_edges, config.for_model(True).image_edges, config.for_model(False).image_edges) == (
        "auto", "projected", "full")
    assert reclip.ReclipConfig(image_edges="projected").for_model(contrastive=False).image_edges == "projected"
    with pytest.raises(reclip.ConfigError, match="v_tower"):
        config.trains_v
    _, _, trained = run_library(domain, "reclip", epochs=1, safeguard=0.0, safeguard_gain=-1.0)  # safeguard off
    assert trained.metrics["config"]["v_tower"] == "train" and trained.adapter.image_norms
    assert trained.metrics["config"]["alpha"] == 0.99 and trained.metrics["config"]["image_edges"] == "projected"
    model = reclip.load_model("tiny", device="cpu")
    monkeypatch.setattr(model, "contrastive", False)
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    result = reclip.ReCLIP(model, epochs=1, k=10, safeguard=0.0, safeguard_gain=-1.0, workers=0, cache=False).fit(
        dataset, TEMPLATES)
    # towers trained apart: alpha and the graph follow that, V's tower its LayerNorms (trained)
    assert result.metrics["config"]["v_tower"] == "train" and result.adapter.image_norms
    assert result.metrics["config"]["alpha"] == 0.95 and result.metrics["config"]["image_edges"] == "full"


def test_self_training_improves_on_zero_shot(domain):
    _, _, result = run_library(domain, "reclip", epochs=4)
    history = result.history
    final_top1 = result.metrics["final"]["top1"]
    assert final_top1 >= history[0]["top1"] + 0.15
    assert history[0]["top1"] == pytest.approx(result.metrics["zero_shot"]["top1"])
    # T's pseudo labels and its classifier improve as its text norms adapt
    assert history[-1]["pseudo_label_acc_t"] >= history[0]["pseudo_label_acc_t"]
    assert history[-1]["top1_t"] > history[0]["top1_t"]
    # at epoch 0 both branches propagate the same frozen features: they agree everywhere
    assert history[0]["agreement"] == 1.0 and all(0 < h["agreement"] <= 1 for h in history)


@pytest.fixture(scope="module")
def adapted_run(domain, templates_file, tmp_path_factory):
    """The output folder of a ``reclip adapt`` run; what it printed is in ``stdout.txt`` beside it."""
    out = tmp_path_factory.mktemp("run") / "out"
    printed = io.StringIO()
    # a feature cache of its own: the pass counts below include the frozen features' pass
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECLIP_CACHE", str(out.parent / "cache"))
        assert main(["adapt", "--model", "tiny", "--dataset", str(domain), "--templates", str(templates_file),
                     "--epochs", "2", "--k", "10", "--workers", "0", "--out", str(out)]) == 0
    (out.parent / "stdout.txt").write_text(printed.getvalue())
    return out


def test_adapt_says_what_the_safeguard_kept_and_how_it_calibrated(adapted_run):
    guard = json.loads((adapted_run / "metrics.json").read_text())["safeguard"]
    printed = (adapted_run.parent / "stdout.txt").read_text()
    assert guard["kept"] == "adapted"
    assert (f"safeguard: {guard['reason']}; adapted predictions kept; confidences calibrated to a mean of "
            f"{100 * guard['confidence_target']:.1f}%") in printed


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
    assert m["config"]["v_loss"] == reclip.ReclipConfig().v_loss == "reference" and m["peak_memory_mb"] > 0
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
    """``reclip adapt`` with the safeguard off: the predictions compared are the trained ones."""
    return [sys.executable, "-m", "reclip", "adapt", "--model", "tiny", "--dataset", str(domain),
            "--templates", str(templates_file), "--epochs", "3", "--k", "10", "--workers", "0",
            "--safeguard", "0", "--safeguard-gain", "-1", "--out", str(out), *extra]


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


@pytest.mark.slow
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


# --- ablation switches --------------------------------------------------------------------

def test_without_the_agreement_filter_every_sample_trains(domain):
    _, _, filtered = run_library(domain, "reclip")
    _, _, unfiltered = run_library(domain, "reclip", agreement_filter=False)
    assert filtered.history[1]["agreed_trained"] < 100 and filtered.history[1]["agreement"] < 1
    assert [h["agreed_trained"] for h in unfiltered.history] == [100, 100]


class CountingPropagation:
    """Label propagation with the run's settings that counts its calls."""

    name = "counting"

    def __init__(self, **settings) -> None:
        from reclip.method.transduce.peers import LabelPropagation

        config = reclip.ReclipConfig(k=10, **settings).for_model(contrastive=True)
        self.inner, self.calls = LabelPropagation(config.propagation_settings(4)), 0

    def __call__(self, features, classifier):
        self.calls += 1
        return self.inner(features, classifier)


def test_zero_shot_pseudo_labels_skip_label_propagation(domain):
    from reclip.method.run import Stages

    counting = CountingPropagation()
    _, _, result = run_library(domain, "reclip", pseudo_labels="zero-shot", stages=Stages(pseudo_labels=counting))
    # no propagation for pseudo labels (the safeguard's judge is another stage)
    assert counting.calls == 0 and len(result.history) == 2
    first = result.history[0]
    # epoch 0: T's pseudo labels are T's own predictions, whose accuracy is T's top-1
    assert first["pseudo_label_acc_t"] == pytest.approx(first["top1_t"])
    assert first["pseudo_label_acc_v"] == pytest.approx(first["top1_v"])


def test_no_project_builds_the_graph_on_unprojected_features(domain):
    assert reclip.ReclipConfig(project=False).for_model(True).propagation_settings(4)["project"] is False
    _, _, projected = run_library(domain, "t-only", epochs=1)
    _, _, unprojected = run_library(domain, "t-only", epochs=1, project=False)
    assert projected.metrics["config"]["project"] and not unprojected.metrics["config"]["project"]
    assert projected.history[0]["pseudo_label_acc_t"] != unprojected.history[0]["pseudo_label_acc_t"]
