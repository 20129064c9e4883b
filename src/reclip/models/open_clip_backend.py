"""open_clip backend: every architecture open_clip knows (CLIP, OpenCLIP, SigLIP, ...)."""
from __future__ import annotations

import contextlib
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
from open_clip.pretrained import download_pretrained
import torch
from torch import nn

from ..errors import ArgumentError, ReclipError
from .base import DualEncoder
from .hub import hub_reachable, offline_hub

TINY_CONFIG = Path(__file__).parent / "configs" / "reclip-tiny.json"
TINY_NAME = "reclip-tiny"
TINY_SEED = 0


class OpenClipDualEncoder(DualEncoder):
    """Wraps an open_clip ``CLIP`` / ``CustomTextCLIP`` model and its own eval transform."""

    def __init__(self, model: nn.Module, preprocess: Any, tokenizer: Any, spec: str,
                 pretrained: str | None) -> None:
        self.module = model.eval()
        self.preprocess = preprocess
        self._tokenizer = tokenizer
        self.spec = spec
        self.pretrained = pretrained
        self.name = f"{spec} ({pretrained})" if pretrained else spec

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._tokenizer(texts).to(self.device)

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(images)

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.encode_text(tokens)

    def image_modules(self) -> list[nn.Module]:
        return [self.module.visual]

    def text_modules(self) -> list[nn.Module]:
        m = self.module
        if hasattr(m, "text"):  # CustomTextCLIP (SigLIP, CoCa-style and HF text towers)
            return [m.text]
        return [m.token_embedding, m.transformer, m.ln_final]


def open_clip_arch(spec: str) -> str | None:
    """The canonical open_clip architecture name matching ``spec`` (case-insensitive), if any."""
    by_lower = {name.lower(): name for name in open_clip.list_models()}
    return by_lower.get(spec.lower())


def check_pretrained(arch: str, pretrained: str) -> None:
    if Path(pretrained).expanduser().exists():
        return
    if Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}:
        raise ReclipError(f"weights file {pretrained} does not exist; pass an existing file "
                          f"or a pretrained tag such as "
                          f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)[:4]) or 'openai'}")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ReclipError(f"unknown pretrained tag '{pretrained}' for {arch}; known tags: "
                          f"{', '.join(tags) or 'none'} (or pass a local weights file)")


def _cached_weights(arch: str, tag: str) -> bool:
    """Whether the weights of a pretrained ``tag`` are in the local caches (asked before the
    model is built, so that a miss costs no time): the hub's cache, read offline, or open_clip's
    own for a tag it downloads from a plain URL (offline, that download could only hang)."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if cfg.get("hf_hub"):
        with offline_hub(), _quiet_open_clip():
            try:
                return bool(download_pretrained(cfg))
            except Exception:  # noqa: BLE001 - any failure to read the cache is a miss
                return False
    return not cfg.get("url") or (Path("~/.cache/clip").expanduser() / Path(cfg["url"]).name).is_file()


def _no_weights(arch: str, source: str, why: str) -> ArgumentError:
    """One line: which weights could not be loaded, why, and how to pass local ones."""
    return ArgumentError("pretrained", f"could not load weights '{source}' for {arch}: {why}; download them on a "
                         f"machine with internet and pass {{arg}} (or an open_clip folder as local-dir:/path)",
                         "/path/to/open_clip_model.safetensors")


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Hush open_clip's log lines (it logs through the root logger) inside the block."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _seeded_random_init():
    """Seed the tiny model's random initialisation (so every run builds the same model),
    without touching the caller's RNG, and hush open_clip's "no pretrained weights" warning."""
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(TINY_SEED)
        yield


def build_open_clip(spec: str, pretrained: str | None, device: str | torch.device) -> OpenClipDualEncoder:
    """Build an open_clip model from an architecture name, ``hf-hub:`` / ``local-dir:`` or ``tiny``.

    ``tiny`` is a seeded, randomly initialised 2-layer model (32 px, width 64) from the
    config shipped in the package, for tests and smoke runs; with ``pretrained`` a file,
    those weights are loaded into the tiny architecture instead.
    """
    if spec == "tiny":
        open_clip.add_model_config(TINY_CONFIG)
        arch = TINY_NAME
    elif spec.startswith(("hf-hub:", "local-dir:")):
        arch = spec
        if spec.startswith("local-dir:") and not Path(spec.split(":", 1)[1]).expanduser().is_dir():
            raise ReclipError(f"model folder {spec.split(':', 1)[1]} does not exist; "
                              "pass local-dir:/path/to/folder holding open_clip_config.json and weights")
    else:
        arch = open_clip_arch(spec)
        if arch is None:
            raise ReclipError(f"unknown model '{spec}'")  # load_model's check_model names the choices
    if pretrained is not None and not spec.startswith(("hf-hub:", "local-dir:")):
        check_pretrained(arch, pretrained)
        pretrained = str(Path(pretrained).expanduser()) if Path(pretrained).expanduser().exists() else pretrained

    downloads = pretrained is not None and not Path(pretrained).exists() or spec.startswith("hf-hub:")
    offline = downloads and not hub_reachable()
    if offline and pretrained is not None and not _cached_weights(arch, pretrained):
        raise _no_weights(arch, pretrained, "the model hub is unreachable and they are not in the local cache")
    try:
        with _seeded_random_init() if spec == "tiny" else contextlib.nullcontext(), \
                offline_hub() if offline else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device)
            tokenizer = open_clip.get_tokenizer(arch)
    except ReclipError:
        raise
    except Exception as exc:  # network errors, missing files, incompatible checkpoints
        why = ("the model hub is unreachable and they are not in the local cache" if offline
               else textwrap.shorten(str(exc), 300, placeholder=" ...") or type(exc).__name__)
        raise _no_weights(arch, pretrained or spec, why) from exc
    return OpenClipDualEncoder(model, preprocess, tokenizer, spec, pretrained)
