"""The safeguard's checks mean the same at every target size: each signal is a mean over the N
images, compared with its threshold through a one-sided bound that shrinks as 1 / sqrt(N)."""
from __future__ import annotations

import pytest
import torch

import reclip
from reclip.method.safeguard import bounds, decide, gain_per_image, judge_run, keeps_adapted

Z95 = 1.6448536269514722  # the one-sided 95% normal quantile
Z80 = 0.8416212335729143  # the one-sided 80% one (the default level)


def test_bounds_by_value():
    high, low = bounds(0.6, 0.02, 0.1, 300, 0.95)
    assert high == pytest.approx(0.6 + Z95 * (0.6 * 0.4 / 300) ** 0.5)
    assert low == pytest.approx(0.02 - Z95 * 0.1 / 300 ** 0.5)
    assert bounds(0.6, 0.02, 0.1, 300, 0.5) == pytest.approx((0.6, 0.02))  # level 0.5: the values


def test_an_agreement_just_under_the_threshold_is_noise_at_300_images_not_at_20000():
    # the case: 59.0% agreement at --n 300, the adapted predictions clearly estimated better
    assert keeps_adapted(0.59, 0.6, 0.05, 0.0, gain_sd=0.2, n=300, level=0.95)
    assert not keeps_adapted(0.59, 0.6, 0.05, 0.0, gain_sd=0.2, n=20_000, level=0.95)
    # far below the threshold falls back at any size
    assert not keeps_adapted(0.45, 0.6, 0.05, 0.0, gain_sd=0.2, n=300, level=0.95)
    # level 0.5 is the fixed rule of before, and the default
    assert not keeps_adapted(0.59, 0.6, 0.05, 0.0, gain_sd=0.2, n=300, level=0.5)
    assert keeps_adapted(0.61, 0.6, 0.01, 0.0) and not keeps_adapted(0.59, 0.6, 0.01, 0.0)


def test_the_decision_applies_the_bounds():
    logits = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    # 59% agreement is within the noise of 60% over 300 images at level 0.8, and +20 points of
    # estimated gain with a per-image spread of 0.5 clear their bound: kept
    kept = decide(logits, 0.59, 0.6, 0.2, 0.0, None, gain_sd=0.5, n=300, level=0.8)
    assert kept.kept == "adapted"
    assert kept.agreement_bound == pytest.approx(0.59 + Z80 * (0.59 * 0.41 / 300) ** 0.5)
    assert kept.gain_bound == pytest.approx(0.2 - Z80 * 0.5 / 300 ** 0.5)
    # +1 point with that spread does not: 0.01 - 0.84 x 0.5 / sqrt(300) < 0
    assert decide(logits, 0.59, 0.6, 0.01, 0.0, None, gain_sd=0.5, n=300, level=0.8).kept == "zero-shot"
    # nor +20 points measured on a single image
    assert decide(logits, 0.59, 0.6, 0.2, 0.0, None, gain_sd=0.5, n=1, level=0.8).kept == "zero-shot"
    # without a spread the gain's bound is its value
    assert decide(logits, 0.8, 0.6, 0.01, 0.0, None, n=300, level=0.8).kept == "adapted"


def test_the_spread_of_the_gain_is_measured_from_two_images_on():
    posterior = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    zero_shot = torch.tensor([1, 1])
    settings = dict(SETTINGS, safeguard_level=0.8)
    # one image, +0.8: no spread to measure, the bound is the value
    one = judge_run(torch.tensor([[1.0, 0.0]]), 0.9, posterior[:1], zero_shot[:1], settings)
    assert one.kept == "adapted" and one.gain_bound == pytest.approx(0.8)
    # two images, gains +0.8 and -0.6: mean +0.1, spread 0.99 on 2 images: within noise of 0
    two = judge_run(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), 0.9, posterior, zero_shot, settings)
    assert two.estimated_gain == pytest.approx(0.1)
    assert two.gain_bound == pytest.approx(0.1 - Z80 * (0.98 ** 0.5) / 2 ** 0.5) and two.kept == "zero-shot"


def test_a_small_estimated_gain_needs_enough_images():
    # +0.5 points with a per-image spread of 0.1: not above 0 beyond noise on 300 images, on 2,000 it is
    assert not keeps_adapted(0.8, 0.6, 0.005, 0.0, gain_sd=0.1, n=300, level=0.95)
    assert keeps_adapted(0.8, 0.6, 0.005, 0.0, gain_sd=0.1, n=2000, level=0.95)
    assert not keeps_adapted(0.8, 0.6, 0.0, 0.0, gain_sd=0.0, n=10**6, level=0.95)  # no gain never keeps
    assert keeps_adapted(0.8, 0.6, -0.3, -1.0, gain_sd=0.1, n=300, level=0.95)  # -1: the gain check off


def random_run(n: int, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N x C logits, N x C posterior, (N,) zero-shot classes) with the adapted predictions
    somewhat likelier right under the posterior than the zero-shot ones."""
    g = torch.Generator().manual_seed(seed)
    posterior = (torch.randn(n, classes, generator=g) * 2).softmax(-1)
    logits = posterior.log() + torch.randn(n, classes, generator=g)
    zero_shot = torch.randint(0, classes, (n,), generator=g)
    return logits, posterior, zero_shot


SETTINGS = {"safeguard": 0.6, "safeguard_gain": 0.0, "safeguard_level": 0.95, "calibrate": False}


def test_duplicating_every_image_only_tightens_the_bounds():
    logits, posterior, zero_shot = random_run(200)
    once = judge_run(logits, 0.62, posterior, zero_shot, SETTINGS)
    twice = judge_run(logits.repeat(2, 1), 0.62, posterior.repeat(2, 1), zero_shot.repeat(2), SETTINGS)
    gains = gain_per_image(posterior, logits.argmax(-1), zero_shot)
    assert (once.n, twice.n) == (200, 400)
    assert twice.estimated_gain == pytest.approx(once.estimated_gain, abs=1e-7)
    assert once.gain_bound == pytest.approx(once.estimated_gain - Z95 * gains.std().item() / 200 ** 0.5, rel=1e-5)
    # the same per-image statistics: each bound moves toward its value by 1 / sqrt(2) (the sample
    # standard deviation of the doubled set differs by its n - 1 only)
    for value, one, two in ((once.estimated_gain, once.gain_bound, twice.gain_bound),
                            (once.agreement, once.agreement_bound, twice.agreement_bound)):
        assert two - value == pytest.approx((one - value) / 2 ** 0.5, rel=5e-3)


@pytest.mark.parametrize("seed", range(6))
def test_more_of_the_same_images_flips_a_decision_only_inside_the_interval(seed):
    logits, posterior, zero_shot = random_run(150, seed=seed)
    gain = gain_per_image(posterior, logits.argmax(-1), zero_shot)
    for agreement in (0.52, 0.58, 0.61, 0.7):
        decisions = []
        for copies in (1, 2, 4, 16):
            d = judge_run(logits.repeat(copies, 1), agreement, posterior.repeat(copies, 1),
                          zero_shot.repeat(copies), SETTINGS)
            decisions.append(d.kept)
        if decisions[0] != decisions[-1]:
            # only a signal whose 150-image interval held its threshold may decide otherwise
            high, low = bounds(agreement, gain.mean().item(), gain.std().item(), 150, 0.95)
            near_agreement = agreement < SETTINGS["safeguard"] <= high
            near_gain = low <= SETTINGS["safeguard_gain"] < gain.mean().item()
            assert near_agreement or near_gain
        # the gain check only ever turns a fall back into a keep as images are added, never back
        if agreement >= 0.7:
            assert decisions == sorted(decisions, key=lambda k: k == "adapted")


def test_the_level_is_a_validated_setting():
    assert reclip.ReclipConfig().safeguard_level == 0.8
    for bad in (0.4, 1.0):
        with pytest.raises(reclip.ConfigError, match="safeguard_level"):
            reclip.ReclipConfig(safeguard_level=bad)
    with pytest.raises(reclip.ConfigError, match="safeguard_level"):
        reclip.ReclipConfig(mode="transductive", safeguard_level=0.9)
