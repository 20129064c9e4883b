"""Hugging Face transformers backend: CLIP and SigLIP models from a hub id or a local folder."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArgumentError, ReclipError
from .base import DualEncoder
from .hub import hub_reachable


def _features(out: Any) -> torch.Tensor:
    """transformers < 5 returns the projected embedding; 5.x wraps it in ``pooler_output``."""
    return out if torch.is_tensor(out) else out.pooler_output


class HFDualEncoder(DualEncoder):
    """Wraps a transformers ``CLIPModel`` / ``SiglipModel`` with its image processor and tokenizer."""

    def __init__(self, model: nn.Module, image_processor: Any, tokenizer: Any, spec: str) -> None:
        self.module = model.eval()
        self._image_processor = image_processor
        self._tokenizer = tokenizer
        self.spec = spec
        self.pretrained = None
        self.name = spec
        # SigLIP was trained with prompts padded to the full context length; CLIP pads to the batch.
        self._padding = "max_length" if "siglip" in type(model).__name__.lower() else True

    def preprocess(self, image: Any) -> torch.Tensor:
        """PIL image -> C x H x W float tensor with the model's own resize, crop and normalisation."""
        return self._image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self._tokenizer(texts, padding=self._padding, truncation=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return _features(self.module.get_image_features(pixel_values=images))

    def _encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(self.module.get_text_features(**tokens))

    def image_modules(self) -> list[nn.Module]:
        m = self.module
        return [m.vision_model] + ([m.visual_projection] if hasattr(m, "visual_projection") else [])

    def text_modules(self) -> list[nn.Module]:
        m = self.module
        return [m.text_model] + ([m.text_projection] if hasattr(m, "text_projection") else [])


def build_hf(source: str, device: str | torch.device) -> HFDualEncoder:
    """Load a CLIP/SigLIP model with ``AutoModel`` from a hub id or a local folder.

    A local folder, ``HF_HUB_OFFLINE=1`` or an unreachable hub reads only local files
    (``local_files_only``), so offline it fails at once instead of retrying.
    """
    try:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ReclipError('Hugging Face models need transformers: pip install "reclip-vlm[hf]"') from exc
    local = Path(source).expanduser().is_dir()
    offline = local or not hub_reachable()
    where = str(Path(source).expanduser()) if local else source
    try:
        model = AutoModel.from_pretrained(where, local_files_only=offline)
        image_processor = AutoImageProcessor.from_pretrained(where, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=offline)
    except Exception as exc:
        why = ("the model hub is unreachable and it is not in the local cache" if offline and not local
               else textwrap.shorten(str(exc), 300, placeholder=" ...") or type(exc).__name__)
        raise ArgumentError("spec", f"could not load Hugging Face model '{source}': {why}; download it on a machine "
                            f"with internet (huggingface-cli download {source}) and pass {{arg}}",
                            "hf:/path/to/folder") from exc
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ReclipError(f"Hugging Face model '{source}' ({type(model).__name__}) is not a dual "
                          "encoder; use a CLIP or SigLIP checkpoint")
    return HFDualEncoder(model.to(device), image_processor, tokenizer, f"hf:{source}")
