"""How ReCLIP fuses T's and V's heads (reclip.method.heads): the paper's average as a switch,
the calibrated fusion by value, and the same fused head in the run, its report and the adapter."""
from __future__ import annotations

import warnings

import pytest
import torch

import reclip
from reclip.method.heads import Fusion, combine, fit_fusion, fuse

T = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
V = torch.tensor([[0.0, 1.0], [4.0, -2.0]])


def test_average_is_the_papers_half_sum_exactly():
    assert torch.equal(combine(T, V, "reclip", Fusion()), 0.5 * (T + V))
    logits, fusion = fuse(T, V, "reclip", "average", None)
    assert fusion == Fusion("average", 1.0, 1.0) and torch.equal(logits, 0.5 * (T + V))
    assert torch.equal(combine(T, V, "t-only", Fusion("calibrated", 2.0, 0.5)), T)
    assert torch.equal(combine(T, V, "v-only", Fusion("calibrated", 2.0, 0.5)), V)


@pytest.mark.parametrize("mode", ["t-only", "v-only"])
def test_a_single_branch_fits_no_fusion(mode):
    logits, fusion = fuse(T, V, mode, "calibrated", 0.7)  # what an adapter of that run stores
    assert fusion == Fusion() and torch.equal(logits, T if mode == "t-only" else V)


def test_calibrated_fusion_by_hand():
    # row 0: T / 2 = (1, 0) -> log-softmax (-log(1+e) + 1, -log(1+e)); V / 0.5 = (0, 2) -> (-log(1+e^2), 2 - log(1+e^2))
    fused = combine(T, V, "reclip", Fusion("calibrated", 2.0, 0.5))
    a, b = 1.3132616875182228, 2.1269280110429727  # log(1 + e), log(1 + e^2)
    assert fused[0].tolist() == pytest.approx([0.5 * (1 - a - b), 0.5 * (-a + 2 - b)], abs=1e-6)
    assert fused[0].tolist() == pytest.approx([-1.2200948, -0.7200948], abs=1e-6)


def test_each_head_is_fitted_to_the_common_confidence():
    generator = torch.Generator().manual_seed(0)
    t, v = torch.randn(200, 5, generator=generator), 6.5 * torch.randn(200, 5, generator=generator)
    fusion = fit_fusion(t, v, "calibrated", 0.55)
    for logits, temperature in ((t, fusion.temperature_t), (v, fusion.temperature_v)):
        confidence = (logits / temperature).softmax(dim=-1).max(dim=-1).values.mean().item()
        assert confidence == pytest.approx(0.55, abs=1e-4)
    assert fusion.temperature_v / fusion.temperature_t > 3  # V's larger spread is divided away
    with pytest.raises(ValueError, match="confidence target"):
        fit_fusion(t, v, "calibrated", None)


@pytest.fixture(scope="module")
def calibrated_run(domain, tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion") / "out"
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(domain), transform=model.preprocess)
    config = reclip.ReclipConfig(epochs=2, k=10, workers=0, head_fusion="calibrated", safeguard=0.0,
                                 safeguard_gain=-1.0, cache=False)  # leaves the shared feature cache alone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = reclip.ReCLIP(model, config).fit(dataset, out=out)
    return out, result, dataset


def test_the_run_predicts_with_the_fused_head_and_the_adapter_keeps_it(calibrated_run):
    out, result, _ = calibrated_run
    fusion = result.adapter.fusion
    assert fusion.rule == "calibrated" and fusion.temperature_t != fusion.temperature_v
    from reclip.method.safeguard import confidence_target
    expected, refitted = fuse(result.logits["t"], result.logits["v"], "reclip", "calibrated",
                              confidence_target(result.posterior))
    assert refitted == fusion
    torch.testing.assert_close(result.logits["combined"], expected)
    assert reclip.Adapter.load(out).fusion == fusion


def test_predict_from_the_saved_adapter_uses_the_same_fused_head(calibrated_run):
    out, result, dataset = calibrated_run
    adapted = reclip.Adapter.load(out).apply(reclip.load_model("tiny", device="cpu"))
    predictions = adapted.predict(dataset, workers=0)
    torch.testing.assert_close(predictions.probs, result.predictions.probs)
    average = Fusion()
    assert not torch.allclose(combine(result.logits["t"], result.logits["v"], "reclip", average).softmax(-1),
                              result.predictions.probs, atol=1e-3)


def test_the_fusion_in_an_adapter_is_checked(calibrated_run, tmp_path):
    out, result, _ = calibrated_run
    adapter = reclip.Adapter.load(out)
    adapter.meta["fusion"] = {"rule": "calibrated", "temperature_t": -1.0, "temperature_v": 1.0}
    adapter.save(tmp_path / "bad.safetensors")
    with pytest.raises(reclip.ReclipError, match="fusion' temperature_t must be a positive number"):
        reclip.Adapter.load(tmp_path / "bad.safetensors")
    adapter.meta["fusion"] = {"rule": "max"}
    adapter.save(tmp_path / "bad.safetensors")
    with pytest.raises(reclip.ReclipError, match="must name a rule"):
        reclip.Adapter.load(tmp_path / "bad.safetensors")
