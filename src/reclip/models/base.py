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


def named_norm_parameters(modules: list[nn.Module], prefix: str) -> dict[str, nn.Parameter]:
    """Affine weight and bias of every normalisation layer inside ``modules``.

    Keys are ``f"{prefix}.{i}.{module path}.{weight|bias}"`` so they are stable for a
    given architecture and can be saved in an adapter file.
    """
    out: dict[str, nn.Parameter] = {}
    for i, root in enumerate(modules):
        for mod_name, mod in root.named_modules():
            if not isinstance(mod, NORM_TYPES):
                continue
            for p_name in ("weight", "bias"):
                p = getattr(mod, p_name, None)
                if isinstance(p, nn.Parameter):
                    out[f"{prefix}.{i}.{mod_name}.{p_name}".replace("..", ".")] = p
    return out


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

    def named_image_norm_parameters(self) -> dict[str, nn.Parameter]:
        return named_norm_parameters(self.image_modules(), "image")

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
