"""Norm-aware V: the image tower's adaptation follows its normalisation layers (resolved in
``config.profile_for``), and blended BatchNorm statistics live only in V's tower: the frozen
features keep the source statistics, the adapter carries V's and puts them back."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

import reclip
from reclip.method.adapter import Adapter
from reclip.method.config import NORM_RULES, profile_for
from reclip.method.weights import blend_statistics, estimating_statistics
from reclip.models.base import norm_kind
from reclip.models.open_clip_backend import OpenClipDualEncoder
from reclip.precision import autocast

TEMPLATES = ["a photo of a {}."]
# a CLIP ResNet (open_clip's ModifiedResNet, RN50's architecture) small enough for a test
TINY_RESNET = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RECLIP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_resnet(tmp_path: Path) -> OpenClipDualEncoder:
    """A randomly initialised open_clip ResNet CLIP (BatchNorm image tower), seeded."""
    config = tmp_path / "reclip-tiny-resnet.json"
    config.write_text(json.dumps(TINY_RESNET))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    module, _, preprocess = open_clip.create_model_and_transforms("reclip-tiny-resnet")
    return OpenClipDualEncoder(module, preprocess, open_clip.get_tokenizer("reclip-tiny-resnet"), "tiny-resnet", None)


def test_rn50_architecture_resolves_to_the_batchnorm_rule():
    model = OpenClipDualEncoder(open_clip.create_model("RN50"), None, None, "RN50", None)  # random weights, offline
    assert model.contrastive and model.image_norm == "batchnorm"
    config = reclip.ReclipConfig().for_model(model.contrastive, model.image_norm)
    assert (config.v_tower, config.v_bn_blend) == NORM_RULES["batchnorm"]
    assert config.alpha == 0.99 and config.image_edges == "projected"  # still keyed on contrastive
    assert len(model.named_image_norm_statistics()) == 2 * 55  # mean and variance of its 55 BatchNorm layers


def test_vit_resolves_to_the_papers_rule():
    model = reclip.load_model("tiny", device="cpu")
    assert model.image_norm == "layernorm" and model.named_image_norm_statistics() == {}
    config = reclip.ReclipConfig().for_model(model.contrastive, model.image_norm)
    assert (config.v_tower, config.v_bn_blend) == ("train", 0.0)
    assert config.trains_v and config.adapts_v_tower


def test_bridge_resolves_to_the_batchnorm_rule():
    model = reclip.load_model("bridge", device="cpu")
    assert (model.contrastive, model.image_norm) == (False, "batchnorm")
    profile = profile_for(model.contrastive, model.image_norm)
    assert (profile.name, profile.alpha, profile.image_edges) == ("apart/batchnorm", 0.95, "full")
    assert (profile.v_tower, profile.v_bn_blend) == NORM_RULES["batchnorm"]
    assert len(model.named_image_norm_statistics()) == 2 * 49


def test_norm_kind_of_module_lists():
    assert norm_kind([torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))]) == "batchnorm"
    assert norm_kind([torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)]) == "layernorm"
    assert norm_kind([torch.nn.GroupNorm(1, 4)]) == "layernorm"
    assert norm_kind([torch.nn.Linear(2, 2)]) == "none"
    assert profile_for(True, "none").v_tower == "frozen"
    with pytest.raises(reclip.ConfigError, match="image_norm"):
        profile_for(True, "instancenorm")


def test_explicit_settings_override_the_rule_and_are_checked():
    config = reclip.ReclipConfig(v_tower="train", v_bn_blend=0.25).for_model(False, "batchnorm")
    assert (config.v_tower, config.v_bn_blend) == ("train", 0.25)
    with pytest.raises(reclip.ConfigError, match="v_bn_blend"):
        reclip.ReclipConfig(v_bn_blend=1.5)
    with pytest.raises(reclip.ConfigError, match="v_bn_blend"):
        reclip.ReclipConfig(mode="transductive", v_bn_blend=0.5)
    with pytest.raises(reclip.ConfigError, match="v_bn_blend"):
        reclip.ReclipConfig(v_tower="frozen").adapts_v_tower
    frozen_blend = reclip.ReclipConfig(v_tower="frozen", v_bn_blend=0.5).for_model(True)
    assert not frozen_blend.trains_v and frozen_blend.adapts_v_tower
    assert not reclip.ReclipConfig(mode="t-only", v_bn_blend=0.5).for_model(True).adapts_v_tower


def test_blend_is_the_weighted_mean_by_value():
    source = {"a.running_mean": torch.tensor([0.0, 2.0]), "a.running_var": torch.tensor([1.0, 4.0])}
    target = {"a.running_mean": torch.tensor([1.0, -2.0]), "a.running_var": torch.tensor([3.0, 0.0])}
    out = blend_statistics(source, target, 0.25)
    # Schneider et al.: N / (N + n) source + n / (N + n) target with N = 48, n = 16
    assert torch.allclose(out["a.running_mean"], torch.tensor([0.25, 1.0]))
    assert torch.allclose(out["a.running_var"], torch.tensor([1.5, 3.0]))
    assert blend_statistics(source, target, 0.0)["a.running_var"].equal(source["a.running_var"])


def test_estimating_statistics_gives_the_batch_averages_and_restores_the_mode():
    bn = torch.nn.BatchNorm1d(3).eval()
    bn.running_mean.fill_(5.0)
    x = torch.randn(2, 8, 3) * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([1.0, -1.0, 0.5])
    with estimating_statistics([bn]), torch.no_grad():
        for batch in x:
            bn(batch)
    assert not bn.training and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 0
    assert torch.allclose(bn.running_mean, x.mean(dim=1).mean(dim=0), atol=1e-6)
    assert torch.allclose(bn.running_var, x.var(dim=1).mean(dim=0), atol=1e-5)  # unbiased, per batch


def test_blended_statistics_change_v_only_and_the_adapter_restores_them(domain, tmp_path):
    model = tiny_resnet(tmp_path)
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    source = {k: v.clone() for k, v in model.named_image_norm_statistics().items()}
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        frozen = model.encode_image(images)
    runs = {}
    for blend in (0.0, 0.5):
        config = reclip.ReclipConfig(mode="reclip", epochs=1, k=10, workers=0, cache=False, v_tower="frozen",
                                     v_bn_blend=blend, safeguard=0.0, safeguard_gain=-1.0)
        runs[blend] = reclip.ReCLIP(model, config).fit(dataset, TEMPLATES)
        # the model comes back with the source statistics
        assert all(v.equal(source[k]) for k, v in model.named_image_norm_statistics().items())
    # zero-shot and label propagation on the frozen model: the same with and without the blend
    assert torch.equal(runs[0.0].logits["zero_shot"], runs[0.5].logits["zero_shot"])
    assert torch.equal(runs[0.0].posterior, runs[0.5].posterior)
    assert runs[0.0].adapter.image_norms == {}
    # V's statistics: half the source's, half those re-estimated on the target images
    with estimating_statistics(model.image_modules()), torch.no_grad(), autocast(model.device):
        for batch in images.split(64):  # the run's batches, in its precision
            model.encode_image(batch)
    target = {k: v.clone() for k, v in model.named_image_norm_statistics().items()}
    for k, v in source.items():
        model.named_image_norm_statistics()[k].copy_(v)
    stored = runs[0.5].adapter.image_norms
    changed = 0
    for key, value in source.items():
        assert torch.allclose(stored[key], 0.5 * value + 0.5 * target[key], rtol=1e-4, atol=1e-5)
        changed += not torch.allclose(stored[key], value)
    assert changed > 0
    # the round trip: the saved adapter encodes V with the blended statistics, the frozen tower with the source's
    runs[0.5].adapter.save(tmp_path / "adapter.safetensors")
    adapted = Adapter.load(tmp_path / "adapter.safetensors").apply(model)
    f_frozen, f_v = adapted.encode(images)
    assert torch.allclose(f_frozen, frozen, atol=1e-5)
    assert not torch.allclose(f_v, frozen, atol=1e-3)
    assert all(v.equal(source[k]) for k, v in model.named_image_norm_statistics().items())
    predictions = adapted.predict(dataset, workers=0)
    assert torch.allclose(predictions.probs, runs[0.5].predictions.probs, atol=1e-4)


def test_a_run_resolves_v_from_the_towers_norm_layers(domain, tmp_path):
    model = tiny_resnet(tmp_path)
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    result = reclip.ReCLIP(model, epochs=1, k=10, safeguard=0.0, safeguard_gain=-1.0, workers=0, cache=False).fit(
        dataset, TEMPLATES)
    assert result.metrics["profile"]["name"] == "contrastive/batchnorm"
    assert (result.metrics["config"]["v_tower"], result.metrics["config"]["v_bn_blend"]) == NORM_RULES["batchnorm"]
    assert result.metrics["config"]["alpha"] == 0.99
    # a frozen tower: V's classifier is the blended head, and the run predicts with V's head alone
    assert (result.metrics["config"]["v_head"], result.metrics["config"]["head_fusion"]) == ("blend", "v")
    assert result.adapter.fusion.rule == "v"
    torch.testing.assert_close(result.logits["combined"], result.logits["v"])
    assert not torch.allclose(result.logits["v"], result.logits["t"], atol=1e-3)
    out = tmp_path / "adapter"
    result.adapter.save(out)
    adapted = Adapter.load(out).apply(model)
    torch.testing.assert_close(adapted.predict(dataset, workers=0).probs, result.predictions.probs)
