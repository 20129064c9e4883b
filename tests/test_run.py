"""The library API: ``ReCLIP(model, config).fit``, ``ReclipConfig`` validation, predict from
Python, the feature cache's identity, resume identity and output-folder safety."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import reclip
from reclip.cli.main import main
from reclip.data.prompts import get_templates
from reclip.method.config import ConfigError
from reclip.method.zeroshot import class_embeddings
from reclip.models.factory import load_model
from reclip.paths import feature_cache_dir


README = Path(__file__).parents[1] / "README.md"


pytestmark = pytest.mark.usefixtures("private_cache")


# --- ReclipConfig ------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"mode": "bogus"}, "mode must be one of reclip, v-only, t-only, transductive, transclip, zero-shot; got 'bogus'"),
    ({"v_loss": "Mean"}, "v_loss must be one of reference, mean; got 'Mean'"),
    ({"v_graph": "txt"}, "v_graph must be one of centroids, text; got 'txt'"),
    ({"knn": "fast"}, "knn must be one of exact, approx; got 'fast'"),
    ({"image_edges": "all"}, "image_edges must be one of auto, projected, full; got 'all'"),
    ({"alpha": 1.5}, "alpha must be in (0, 1); got 1.5"),
    ({"alpha": 0.0}, "alpha must be in (0, 1); got 0"),
    ({"batch_size": 0}, "batch_size must be at least 1; got 0"),
    ({"epochs": -1}, "epochs must be at least 0; got -1"),
    ({"k": 0}, "k must be at least 1; got 0"),
    ({"lr_v": -1e-3}, "lr_v must be in [0, 10]; got -0.001"),
    ({"lr_v": float("nan")}, "lr_v must be a finite number; got nan"),
    ({"weight_decay": float("inf")}, "weight_decay must be a finite number; got inf"),
    ({"weight_decay": 5.0}, "weight_decay must be in [0, 1); got 5"),
    ({"workers": -1}, "workers must be at least 0; got -1"),
    ({"cut_dim": 1}, "cut_dim must be at least 2; got 1"),
    ({"t_template": "a photo"}, "t_template must be a template with {} where the class name goes"),
    ({"epochs": 2.5}, "epochs must be a whole number; got 2.5"),
])
def test_config_rejects_bad_values_in_one_line_naming_the_parameter(settings, message):
    with pytest.raises(ConfigError) as info:
        reclip.ReclipConfig(**settings)
    assert isinstance(info.value, reclip.ReclipError)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert info.value.param == next(iter(settings))


def test_the_cli_names_the_flag_of_a_bad_setting(capsys):
    assert main(["adapt", "--model", "tiny", "--dataset", "/no/such/dir", "--out", "/tmp/unused",
                 "--v-tower", "train", "--lr-t", "nan"]) == 2
    assert capsys.readouterr().err == "reclip: error: --lr-t must be a finite number; got nan\n"


def test_cut_dim_follows_the_authors_rule_for_many_classes():
    assert reclip.ReclipConfig().projection_rank(10) is None
    assert reclip.ReclipConfig().projection_rank(1000) == 250
    assert reclip.ReclipConfig(cut_dim=64).projection_rank(1000) == 64


def test_model_dependent_and_mode_dependent_defaults_are_resolved_in_one_place():
    from reclip.method.config import FAMILIES, K_PROPAGATION, K_TRANSCLIP, NORM_RULES

    assert reclip.ReclipConfig().k is None and reclip.ReclipConfig().for_model(True).k == K_PROPAGATION == 20
    assert reclip.ReclipConfig(mode="transclip").for_model(True).k == K_TRANSCLIP == 3
    assert reclip.ReclipConfig(mode="transclip", k=20).for_model(True).k == 20
    apart = reclip.ReclipConfig().for_model(False, "batchnorm")
    assert (apart.alpha, apart.image_edges) == (0.95, "full") == FAMILIES["apart"]
    assert (apart.v_tower, apart.v_bn_blend) == ("frozen", 0.0) == NORM_RULES["batchnorm"]


def test_every_setting_has_a_stage_and_a_flag():
    import argparse
    from dataclasses import fields

    from reclip.cli.common import add_data_options, add_method_options, flag
    from reclip.method.config import STAGES

    parser = argparse.ArgumentParser()
    add_data_options(parser)
    add_method_options(parser)
    dests = {a.dest: a for a in parser._actions}
    for f in fields(reclip.ReclipConfig):
        assert f.metadata["stage"] in STAGES and f.metadata["help"]
        assert f.name in dests and flag(f.name) in dests[f.name].option_strings, f.name
    args = parser.parse_args(["--dataset", "x", "--momentum", "0.5", "--epoch-max", "7", "--no-calibrate",
                              "--no-cache"])
    assert (args.momentum, args.epoch_max, args.calibrate, args.cache) == (0.5, 7, False, False)


@pytest.mark.parametrize("settings, message", [
    ({"mode": "transductive", "epochs": 3}, "epochs is not used in mode 'transductive' (only in reclip, v-only, t-only)"),
    ({"mode": "zero-shot", "k": 5}, "k is not used in mode 'zero-shot'"),
    ({"mode": "transclip", "alpha": 0.5}, "alpha is not used in mode 'transclip'"),
    ({"mode": "t-only", "safeguard": 0.1}, "safeguard is not used in mode 't-only' (only in reclip)"),
    ({"mode": "v-only", "calibrate": False}, "calibrate is not used in mode 'v-only'"),
])
def test_a_setting_the_mode_does_not_use_is_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError) as info:
        reclip.ReclipConfig(**settings)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert info.value.param == list(settings)[1]


def test_transclip_uses_the_k_it_is_given(domain):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    default = reclip.ReCLIP(model, mode="transclip", workers=0).fit(dataset)
    given = reclip.ReCLIP(model, mode="transclip", k=20, workers=0).fit(dataset)
    assert default.metrics["transclip"]["k"] == default.metrics["config"]["k"] == 3
    assert given.metrics["transclip"]["k"] == given.metrics["config"]["k"] == 20


# --- the README's "From Python" example -----------------------------------------------------

def readme_python_example() -> str:
    text = README.read_text()
    section = text[text.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_on_the_tiny_model(domain, tmp_path, monkeypatch, make_image_folder):
    code = readme_python_example()
    spec = 'reclip.load_model("ViT-B-32", pretrained="openai")'
    assert code.count(spec) == 2 and '"photos/"' in code and '"new_photos/"' in code
    new_photos = tmp_path / "new_photos"
    shutil.copytree(domain, new_photos)
    shutil.rmtree(new_photos / "ant")  # new images of only some of the classes
    shutil.copytree(domain, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    code = code.replace(spec, 'reclip.load_model("tiny")')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    result, predictions = namespace["result"], namespace["predictions"]
    assert (tmp_path / "runs" / "photos" / "adapter.safetensors").is_file()
    assert (tmp_path / "runs" / "new.csv").is_file()
    assert len(predictions) == 75 and len(result.predictions) == 100
    # the adapter in a fresh model predicts what the run predicted, image for image
    # image paths are made absolute when the dataset is loaded
    run_pred = {os.path.relpath(p, tmp_path): n for p, n in zip(result.predictions.image_paths,
                                                                 result.predictions.pred_names)}
    new_pred = {os.path.relpath(p, tmp_path): n for p, n in zip(predictions.image_paths, predictions.pred_names)}
    assert new_pred and all(run_pred["photos" + p[len("new_photos"):]] == name for p, name in new_pred.items())


# --- fit --------------------------------------------------------------------------------

def test_fit_twice_on_one_model_scores_zero_shot_with_the_frozen_model(domain):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    config = reclip.ReclipConfig(epochs=2, k=10, workers=0)
    first = reclip.ReCLIP(model, config).fit(dataset)
    second = reclip.ReCLIP(model, config).fit(dataset)
    torch.testing.assert_close(second.zero_shot.probs, first.zero_shot.probs, rtol=0, atol=0)
    torch.testing.assert_close(second.predictions.probs, first.predictions.probs, rtol=0, atol=0)
    # even with the adapter applied to the model, zero-shot features are recomputed, not served stale
    first.adapter.apply(model)
    adapted_zero_shot = reclip.ReCLIP(model, mode="zero-shot", workers=0).fit(dataset)
    assert not torch.equal(adapted_zero_shot.zero_shot.probs, first.zero_shot.probs)


def test_overwritten_weights_file_gives_new_image_features(tmp_path, make_image_folder):
    data = make_image_folder({"a": 3, "b": 3})
    weights = tmp_path / "weights.pt"
    config = reclip.ReclipConfig(mode="zero-shot", workers=0)

    def write_weights(seed: int) -> None:
        torch.manual_seed(seed)
        state = load_model("tiny", device="cpu").module.state_dict()
        torch.save({k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()},
                   weights)

    def zero_shot_probs() -> tuple[torch.Tensor, torch.Tensor]:
        """(the run's zero-shot probabilities, the same computed directly with the file's weights)"""
        model = load_model("tiny", str(weights), "cpu")
        dataset = reclip.load_dataset(str(data), transform=model.preprocess)
        result = reclip.ReCLIP(model, config).fit(dataset)
        with torch.inference_mode():
            images = torch.stack([dataset[i][0] for i in range(len(dataset))])
            classifier = class_embeddings(model, dataset.classnames, get_templates(None))
            direct = (100 * model.encode_image(images) @ classifier.T).softmax(-1)
        return result.zero_shot.probs, direct

    write_weights(1)
    probs_1, direct_1 = zero_shot_probs()
    write_weights(2)  # same path, new content
    probs_2, direct_2 = zero_shot_probs()
    torch.testing.assert_close(probs_1, direct_1, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs_2, direct_2, atol=1e-5, rtol=0)
    assert not torch.allclose(probs_1, probs_2, atol=1e-3)
    assert len(list(feature_cache_dir().glob("*.safetensors"))) == 2


def test_damaged_feature_cache_entry_is_recomputed(domain):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    run = reclip.ReCLIP(model, mode="zero-shot", workers=0)
    first = run.fit(dataset)
    [entry] = list(feature_cache_dir().glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])
    second = run.fit(dataset)
    torch.testing.assert_close(second.zero_shot.probs, first.zero_shot.probs)
    assert entry.stat().st_size > 100  # rewritten


def test_transductive_and_zero_shot_are_modes_of_the_same_object(domain, tmp_path):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    one = ["a photo of a {}."]
    zs = reclip.ReCLIP(model, mode="zero-shot", workers=0).fit(dataset, one, out=tmp_path / "zs")
    lp = reclip.ReCLIP(model, mode="transductive", k=10, workers=0).fit(dataset, one, out=tmp_path / "lp")
    assert zs.adapter is None and lp.adapter is None and zs.history == [] == lp.history
    assert lp.metrics["final"]["top1"] > zs.metrics["final"]["top1"] + 0.2
    assert sorted(p.name for p in (tmp_path / "lp").iterdir() if not p.name.startswith(".")) == \
        ["metrics.json", "predictions.csv", "report.html", "report_inputs.json"]
    torch.testing.assert_close(lp.zero_shot.probs, zs.predictions.probs)


def test_callbacks_see_every_epoch(domain):
    seen = []

    class Record(reclip.Callback):
        def on_fit_start(self, info):
            seen.append(("start", info["epochs"], info["resumed"]))

        def on_epoch_end(self, record, epochs):
            seen.append(("epoch", record["epoch"], epochs))

        def on_fit_end(self, result):
            seen.append(("end", len(result.history)))

    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    reclip.ReCLIP(model, epochs=2, k=10, workers=0).fit(dataset, callbacks=[Record()])
    assert seen == [("start", 2, False), ("epoch", 0, 2), ("epoch", 1, 2), ("end", 2)]


def test_resume_is_refused_when_class_names_or_templates_change(domain, tmp_path):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    run = reclip.ReCLIP(model, epochs=1, k=10, workers=0)
    run.fit(dataset, out=tmp_path / "out")
    with pytest.raises(reclip.ReclipError, match=r"other settings \(templates\)"):
        run.fit(dataset, ["a sketch of a {}."], out=tmp_path / "out", resume=True)
    renamed = reclip.load_dataset(str(domain), transform=model.preprocess,
                                  classnames=[["ant"], ["bee"], ["cat"], ["puppy"]])
    with pytest.raises(reclip.ReclipError, match=r"other settings \(classnames\)"):
        run.fit(renamed, out=tmp_path / "out", resume=True)


def test_non_finite_training_stops_with_one_line_and_keeps_the_last_checkpoint(domain, tmp_path, monkeypatch):
    from safetensors import safe_open

    from reclip.method import selftrain as loop

    calls = {"n": 0}
    finite_ce = loop.masked_ce_sum

    def ce_that_diverges_in_epoch_2(*args):
        calls["n"] += 1  # 100 images in batches of 64: two steps per epoch
        return finite_ce(*args) * (float("nan") if calls["n"] > 2 else 1.0)

    monkeypatch.setattr(loop, "masked_ce_sum", ce_that_diverges_in_epoch_2)
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    with pytest.raises(reclip.ReclipError, match=r"training diverged in epoch 2 .*lower the learning rates") as info:
        reclip.ReCLIP(model, mode="t-only", epochs=3, k=10, workers=0).fit(dataset, out=tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "metrics.json").exists()
    with safe_open(str(tmp_path / "out" / "checkpoint" / "state.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["reclip"])["epoch"] == 1
        assert all(bool(f.get_tensor(k).isfinite().all()) for k in f.keys() if k.startswith("norm."))


def test_output_folder_errors_come_before_any_work(domain, tmp_path):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    (tmp_path / "file").write_text("x")
    with pytest.raises(reclip.ReclipError, match="is a file"):
        reclip.ReCLIP(model, workers=0).fit(dataset, out=tmp_path / "file")
    with pytest.raises(reclip.ReclipError, match="resume=True needs out"):
        reclip.ReCLIP(model, workers=0).fit(dataset, resume=True)


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path):
    from reclip.io import output_folder

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".metrics.json.dead.tmp").write_text("")  # left by a killed run
    with output_folder(tmp_path / "out"):
        assert not (tmp_path / "out" / ".metrics.json.dead.tmp").exists()
        with pytest.raises(reclip.ReclipError, match="another reclip run is writing to"):
            with output_folder(tmp_path / "out"):
                pass


# --- predict from Python ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(domain, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "out"
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    result = reclip.ReCLIP(model, epochs=2, k=10, workers=0).fit(dataset, out=out)
    return out, result


def test_predict_equals_the_run_and_maps_labels_by_name(fitted, domain, tmp_path):
    out, result = fitted
    adapted = reclip.Adapter.load(out).apply(reclip.load_model("tiny", device="cpu"))
    reordered = [["fox"], ["dog"], ["cat"], ["bee"], ["ant"]]  # another order, plus a class with no images
    dataset = reclip.load_dataset(str(domain), transform=adapted.model.preprocess, classnames=reordered[1:])
    predictions = adapted.predict(dataset, workers=0)
    torch.testing.assert_close(predictions.probs, result.predictions.probs)
    final = result.metrics["final"]
    assert predictions.metrics() == pytest.approx({k: final[k] for k in predictions.metrics()})
    with pytest.raises(reclip.ReclipError, match="class 'fox' .* is not one of the adapter's 4 classes"):
        adapted.predict(reclip.load_dataset(str(domain), transform=adapted.model.preprocess,
                                            classnames=[["fox"], ["bee"], ["cat"], ["dog"]]), workers=0)


def test_cli_predict_never_writes_two_outputs_to_one_path(fitted, domain, tmp_path):
    out, result = fitted
    target = tmp_path / "p.json"
    assert main(["predict", "--adapter", str(out), "--dataset", str(domain), "--out", str(target),
                 "--workers", "0"]) == 0
    assert target.read_text().startswith("index,path,pred,pred_name,confidence")
    metrics = json.loads((tmp_path / "p.metrics.json").read_text())
    assert metrics["n"] == 100 and metrics["top1"] == pytest.approx(result.metrics["final"]["top1"])


# --- precision and templates ----------------------------------------------------------------

def test_epoch_zero_prediction_is_the_zero_shot_one_under_bf16_autocast(domain, monkeypatch):
    from reclip import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)  # bf16 autocast on this CPU too
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    # one template: T's first-template head, V's first classifier and the zero-shot classifier coincide;
    # the safeguard is off, so the predictions are the combined head's, not a fallback to zero-shot
    result = reclip.ReCLIP(model, epochs=0, calibrate=False, safeguard=0.0, safeguard_gain=-1.0,
                           workers=0).fit(dataset, ["a photo of a {}."])
    assert result.metrics["safeguard"]["kept"] == "adapted"
    assert torch.equal(result.predictions.probs, result.zero_shot.probs)


def test_t_template_comes_first(domain):
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    result = reclip.ReCLIP(model, mode="zero-shot", t_template="art of a {}.", workers=0).fit(
        dataset, ["a photo of a {}.", "art of a {}."])
    assert result.metrics["templates"] == ["art of a {}.", "a photo of a {}."]
    with pytest.raises(reclip.ReclipError, match="template 'a photo' has no {}"):
        reclip.ReCLIP(model, mode="zero-shot", workers=0).fit(dataset, ["a photo"])
