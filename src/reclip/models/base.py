"""The backend-independent dual-encoder interface every model backend implements.

The rest of reclip (zero-shot, label propagation, the adaptation loop, adapters) only
talks to a ``DualEncoder``: it never imports open_clip, transformers or the bridge towers.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

# Normalisation layers whose affine weight and bias ReCLIP adapts. BatchNorm appears in
# convolutional image towers (ResNet CLIP, EfficientNet); it is always kept in eval mode
# so its running statistics stay frozen.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


#: What ``DualEncoder.image_norm`` reports, by the image tower's normalisation layers.
NORM_KINDS = ("batchnorm", "layernorm", "none")
BATCHNORM_STATISTICS = ("running_mean", "running_var")


def named_norm_parameters(modules: list[nn.Module], prefix: str,
                          names: tuple[str, ...] = ("weight", "bias")) -> dict[str, torch.Tensor]:
    """Affine weight and bias (or the other tensors ``names``, e.g. BatchNorm's
    ``BATCHNORM_STATISTICS``) of every normalisation layer inside ``modules`` that has them.

    Keys are ``f"{prefix}.{i}.{module path}.{name}"`` so they are stable for a
    given architecture and can be saved in an adapter file.
    """
    out: dict[str, torch.Tensor] = {}
    for i, root in enumerate(modules):
        for mod_name, mod in root.named_modules():
            if not isinstance(mod, NORM_TYPES):
                continue
            for p_name in names:
                p = getattr(mod, p_name, None)
                if isinstance(p, torch.Tensor):
                    out[f"{prefix}.{i}.{mod_name}.{p_name}".replace("..", ".")] = p
    return out


def norm_kind(modules: list[nn.Module]) -> str:
    """``"batchnorm"`` when ``modules`` hold a BatchNorm layer (a convolutional tower: ResNet,
    EfficientNet), else ``"layernorm"`` when they hold another normalisation layer (LayerNorm,
    GroupNorm, RMSNorm: a ViT), else ``"none"``."""
    layers = [m for root in modules for m in root.modules() if isinstance(m, NORM_TYPES)]
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layers):
        return "batchnorm"
    return "layernorm" if layers else "none"


class DualEncoder:
    """A CLIP-style model: an image tower and a text tower ending in one embedding space.

    Subclasses set ``module`` (the whole ``nn.Module``), ``preprocess`` (PIL image ->
    C x H x W float tensor, the model's own eval transform), ``name``, ``spec`` and
    ``pretrained``, and implement the four methods marked below.
    """

    module: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    name: str
    spec: str
    pretrained: str | None
    # True when the image embedding depends on statistics of the target images (the bridge
    # model centres its features). Such a model splits its image tower into
    # ``image_trunk`` and ``image_head`` and fits the statistics with ``fit_target`` on the
    # trunk outputs of all target images, so calibration costs no extra pass.
    needs_calibration: bool = False
    # True when the two towers were trained together by a contrastive image-text loss (the
    # CLIP family); ReclipConfig(v_tower="auto") then trains V's image tower.
    contrastive: bool = True

    # --- implemented by each backend -------------------------------------------------
    def tokenize(self, texts: list[str]) -> Any:
        """Turn prompts into whatever ``encode_text`` takes (already on ``self.device``)."""
        raise NotImplementedError

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """B x C x H x W pixels -> B x D unnormalised embeddings."""
        raise NotImplementedError

    def _encode_text(self, tokens: Any) -> torch.Tensor:
        """Tokens of B prompts -> B x D unnormalised embeddings."""
        raise NotImplementedError

    def image_modules(self) -> list[nn.Module]:
        """The modules that make up the image tower (their norm layers belong to ReCLIP-V)."""
        raise NotImplementedError

    def text_modules(self) -> list[nn.Module]:
        """The modules that make up the text tower (their norm layers belong to ReCLIP-T)."""
        raise NotImplementedError

    # --- shared behaviour ------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> "DualEncoder":
        self.module.to(device)
        return self

    def eval(self) -> "DualEncoder":
        self.module.eval()
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x D, L2-normalised, float32."""
        return nn.functional.normalize(self._encode_image(images).float(), dim=-1)

    def encode_head(self, trunk: torch.Tensor) -> torch.Tensor:
        """B x K trunk outputs -> B x D, L2-normalised: ``encode_image`` = ``encode_head(image_trunk)``."""
        return nn.functional.normalize(self.image_head(trunk).float(), dim=-1)

    def encode_text(self, tokens: Any) -> torch.Tensor:
        """Tokens of B prompts -> B x D, L2-normalised, float32."""
        return nn.functional.normalize(self._encode_text(tokens).float(), dim=-1)

    @property
    def image_norm(self) -> str:
        """The image tower's kind of normalisation layers, one of ``NORM_KINDS``; it decides how
        ReCLIP-V adapts the tower (``reclip.method.config.NORM_RULES``)."""
        return norm_kind(self.image_modules())

    def named_image_norm_parameters(self) -> dict[str, nn.Parameter]:
        return named_norm_parameters(self.image_modules(), "image")

    def named_image_norm_statistics(self) -> dict[str, torch.Tensor]:
        """Running mean and variance buffers of the image tower's BatchNorm layers (empty without any)."""
        return named_norm_parameters(self.image_modules(), "image", BATCHNORM_STATISTICS)

    def named_image_norm_state(self) -> dict[str, torch.Tensor]:
        """What ReCLIP-V may change in the image tower: its norm affines and BatchNorm statistics."""
        return {**self.named_image_norm_parameters(), **self.named_image_norm_statistics()}

    def named_text_norm_parameters(self) -> dict[str, nn.Parameter]:
        return named_norm_parameters(self.text_modules(), "text")

    def image_norm_parameters(self) -> list[nn.Parameter]:
        """Affine weight and bias of every normalisation layer of the image tower."""
        return list(self.named_image_norm_parameters().values())

    def text_norm_parameters(self) -> list[nn.Parameter]:
        """Affine weight and bias of every normalisation layer of the text tower."""
        return list(self.named_text_norm_parameters().values())

    def image_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x K: the image tower up to where target statistics enter."""
        raise NotImplementedError(f"{type(self).__name__} needs no calibration")

    def image_head(self, trunk: torch.Tensor) -> torch.Tensor:
        """B x K trunk outputs -> B x D unnormalised embeddings (uses the fitted statistics)."""
        raise NotImplementedError(f"{type(self).__name__} needs no calibration")

    def fit_target(self, trunk: torch.Tensor) -> None:
        """Fit the target statistics from the N x K trunk outputs of the target images."""
        raise NotImplementedError(f"{type(self).__name__} needs no calibration")

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the norm affines that define this model's embedding (saved in adapters)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``extra_state`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
