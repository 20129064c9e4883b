"""Resumable checkpoints: one safetensors file (tensors + JSON metadata), replaced atomically.

A single file means a run killed at any instant (SIGKILL included) leaves either the
previous epoch's checkpoint or the new one, never a mix of the two.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ReclipError
from ..io import atomic_path
from ..models.base import DualEncoder
from .weights import load_into, read_safetensors, snapshot
from .heads import Heads
from .selftrain import RunState

CHECKPOINT = Path("checkpoint") / "state.safetensors"
HEADS = ("v_classifier", "t_classifier", "t_full", "t_original")


def _optimizer_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"opt.{name}.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "keys": sorted(sd["state"])}


def save_checkpoint(out: Path, model: DualEncoder, state: RunState,
                    optimizers: dict[str, torch.optim.Optimizer | None], identity: dict) -> None:
    """Write everything a resumed run needs: trained norms, heads, optimizers, history, RNG.

    ``identity`` (model, dataset, n, config) is checked on resume so a checkpoint is never
    continued with other settings.
    """
    tensors = {f"norm.{k}": v for k, v in snapshot({**model.named_image_norm_state(),
                                                     **model.named_text_norm_parameters()}).items()}
    tensors.update({f"head.{k}": getattr(state.heads, k) for k in HEADS})
    tensors.update({f"extra.{k}": v for k, v in model.extra_state().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    opt_meta = {}
    for name, opt in optimizers.items():
        if opt is not None:
            t, opt_meta[name] = _optimizer_tensors(name, opt)
            tensors.update(t)
    meta = {"identity": identity, "epoch": state.epoch, "history": state.history,
            "passes_forward": state.passes_forward, "passes_backward": state.passes_backward,
            "optimizers": opt_meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(out / CHECKPOINT) as tmp:
        save_file(tensors, str(tmp), metadata={"reclip": json.dumps(meta)})


def load_checkpoint(out: Path, model: DualEncoder, identity: dict) -> tuple[RunState, dict[str, dict]] | None:
    """Restore the model's trained norms and return (state, optimizer state dicts), or None
    when ``out`` has no checkpoint."""
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    fix = "delete it to start over, or use a new output folder without resume"
    meta, tensors = read_safetensors(path, "checkpoint", fix)
    if not isinstance(meta.get("identity"), dict):
        raise ReclipError(f"{path} is not a reclip checkpoint (no identity); {fix}")
    if meta["identity"] != identity:
        diff = sorted(k for k in identity if meta["identity"].get(k) != identity[k])
        raise ReclipError(f"checkpoint in {out} was made with other settings ({', '.join(diff)}); "
                          "rerun with the same options, or use a new output folder without resume")
    try:
        return _restore(path, meta, tensors, model)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ReclipError(f"{path} is damaged ({type(exc).__name__}: {exc}); {fix}") from None


def _restore(path: Path, meta: dict, tensors: dict[str, torch.Tensor],
             model: DualEncoder) -> tuple[RunState, dict[str, dict]]:
    norms = {k[5:]: v for k, v in tensors.items() if k.startswith("norm.")}
    load_into({**model.named_image_norm_state(), **model.named_text_norm_parameters()}, norms,
              f"checkpoint {path}")
    model.load_extra_state({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
    torch.set_rng_state(tensors["rng.torch"])
    optimizers = {}
    for name, om in meta["optimizers"].items():
        per_param = {}
        for i in om["keys"]:
            prefix = f"opt.{name}.{i}."
            per_param[int(i)] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        optimizers[name] = {"state": per_param, "param_groups": om["param_groups"]}
    state = RunState(epoch=meta["epoch"], heads=Heads(**{k: tensors[f"head.{k}"] for k in HEADS}),
                     history=meta["history"], passes_forward=meta["passes_forward"],
                     passes_backward=meta["passes_backward"])
    return state, optimizers
