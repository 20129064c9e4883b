"""A ReCLIP adapter: only what adaptation changed, in one safetensors file.

It holds V's image-tower norm affines, T's text-tower norm affines, V's centroid classifier
(C x D), T's first-template class embeddings (C x D), any model state fitted on the target
(the bridge's centring vector) and, as JSON metadata, the model spec, class names,
templates, config and reclip version. Loading never unpickles anything.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from ..errors import ReclipError
from ..io import atomic_path
from ..models.base import DualEncoder
from ..precision import autocast
from .reclip import combined_logits

ADAPTER_FILE = "adapter.safetensors"


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of named parameters."""
    return {k: p.detach().float().cpu().clone() for k, p in params.items()}


def load_into(params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``values`` into the model's ``params`` in place (names and shapes must match)."""
    missing = set(values) - set(params)
    if missing:
        raise ReclipError(f"{what} does not fit this model ({len(missing)} unknown parameters, "
                          f"e.g. {sorted(missing)[0]}); pass the --model/--pretrained it was made with")
    with torch.no_grad():
        for k, v in values.items():
            if params[k].shape != v.shape:
                raise ReclipError(f"{what} does not fit this model: {k} has shape {tuple(v.shape)}, "
                                  f"the model's is {tuple(params[k].shape)}")
            params[k].copy_(v.to(params[k].device, params[k].dtype))


@contextlib.contextmanager
def image_norms(model: DualEncoder, values: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily put ``values`` into the image tower's norm affines (V's tower), then restore."""
    params = model.named_image_norm_parameters()
    original = snapshot(params)
    load_into(params, values, "adapter")
    try:
        yield
    finally:
        load_into(params, original, "adapter")


@dataclass
class Adapter:
    """The trained state of a ReCLIP run. ``Adapter.load(path).apply(model)`` reuses it."""

    image_norms: dict[str, torch.Tensor]   # V's, empty for t-only
    text_norms: dict[str, torch.Tensor]    # T's, empty for v-only
    v_classifier: torch.Tensor             # C x D
    t_classifier: torch.Tensor             # C x D
    extra_state: dict[str, torch.Tensor]
    meta: dict

    @property
    def classnames(self) -> list[list[str]]:
        return self.meta["classnames"]

    @property
    def mode(self) -> str:
        return self.meta["mode"]

    def save(self, path: str | Path) -> None:
        tensors = {f"norm.{k}": v for k, v in {**self.image_norms, **self.text_norms}.items()}
        tensors["head.v_classifier"] = self.v_classifier
        tensors["head.t_classifier"] = self.t_classifier
        tensors.update({f"extra.{k}": v for k, v in self.extra_state.items()})
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"reclip": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: str | Path) -> "Adapter":
        """Load from an adapter file or from the output folder of ``reclip adapt``."""
        path = Path(path)
        if path.is_dir():
            path = path / ADAPTER_FILE
        if not path.is_file():
            raise ReclipError(f"adapter {path} does not exist; pass the --out folder of a finished "
                              "`reclip adapt` run or its adapter.safetensors")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["reclip"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ReclipError(f"{path} is not a reclip adapter ({type(exc).__name__}); "
                              "pass the adapter.safetensors written by `reclip adapt`") from exc
        pick = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        norms = pick("norm.")
        return cls(image_norms={k: v for k, v in norms.items() if k.startswith("image.")},
                   text_norms={k: v for k, v in norms.items() if k.startswith("text.")},
                   v_classifier=tensors["head.v_classifier"], t_classifier=tensors["head.t_classifier"],
                   extra_state=pick("extra."), meta=meta)

    def apply(self, model: DualEncoder) -> "AdaptedModel":
        """Load T's text norms and the target statistics into ``model``; V's image norms are
        swapped in per batch, since the combined head also needs the frozen image tower."""
        load_into(model.named_text_norm_parameters(), self.text_norms, "adapter")
        model.load_extra_state(self.extra_state)
        return AdaptedModel(model, self)


class AdaptedModel:
    """A base model plus an adapter: classifies images with the adapted (combined) head."""

    def __init__(self, model: DualEncoder, adapter: Adapter) -> None:
        self.model = model
        self.adapter = adapter
        mismatch = set(adapter.image_norms) - set(model.named_image_norm_parameters())
        if mismatch:
            raise ReclipError(f"adapter does not fit model {model.name} ({len(mismatch)} unknown image "
                              "parameters); pass the --model/--pretrained it was made with")

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x C x H x W -> (frozen-tower B x D, V-tower B x D) features, on CPU."""
        frozen = self.model.encode_image(images).cpu()
        if not self.adapter.image_norms:
            return frozen, frozen
        # V ran in this precision when adapt evaluated it last
        with image_norms(self.model, self.adapter.image_norms), autocast(self.model.device):
            return frozen, self.model.encode_image(images).cpu()

    def logits(self, f_frozen: torch.Tensor, f_v: torch.Tensor) -> torch.Tensor:
        """N x C logits of the adapter's head (combined for ReCLIP, one branch otherwise)."""
        a = self.adapter
        return combined_logits(f_frozen, f_v, a.t_classifier, a.v_classifier, a.mode)


def adapter_meta(model: DualEncoder, classnames: list[list[str]], templates: list[str], mode: str,
                 config: dict) -> dict:
    return {"model": model.spec, "pretrained": model.pretrained, "classnames": classnames,
            "templates": templates, "mode": mode, "config": config, "reclip_version": __version__}
