"""torch.distributed glue, so every command runs unchanged under ``torchrun``.

Rank, world size and backend come from the environment torchrun sets (NCCL on CUDA, gloo on
CPU). The work splits like this:

- images are sharded by position (rank r takes images r, r + W, r + 2W, ...): none is
  processed twice and none is lost when N is not divisible by W;
- features are gathered so every rank holds all N rows in dataset order, and label
  propagation then runs on every rank. It is deterministic, so all ranks get the same pseudo
  labels without broadcasting an N x C score matrix, and it costs no more wall time than
  running it on rank 0 while the others wait;
- gradients of V's image-tower norm affines are summed across ranks (a few hundred KB);
  T's step needs no image tower, so every rank computes it identically on the full batch;
- rank 0 alone writes outputs and checkpoints; checkpoints hold no per-rank state, so
  ``--resume`` works with any world size (``--out`` must be on a filesystem all ranks see).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init(device: str | None) -> str | None:
    """Join the process group when launched by torchrun; returns the device this rank uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=60))
    return device


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(items: list[int]) -> list[int]:
    """This rank's share of ``items`` (every world-th item, starting at the rank)."""
    return items[rank()::world()]


def gather_rows(rows: torch.Tensor) -> list[torch.Tensor]:
    """All ranks' ``rows`` (K_r x ... tensors with equal trailing shape), in rank order."""
    if world() == 1:
        return [rows]
    device = _comm_device()
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world())]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: rows.shape[0]] = rows.to(device)
    parts = [torch.zeros_like(padded) for _ in range(world())]
    dist.all_gather(parts, padded)
    return [p[: int(c.item())].cpu() for p, c in zip(parts, counts)]


def all_agree(flag: bool) -> bool:
    """True only when ``flag`` is true on every rank."""
    if world() == 1:
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sum_tensors(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``t`` over ranks (a copy; ``t`` itself is unchanged)."""
    if world() == 1:
        return t
    out = t.to(_comm_device(), copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over ranks (in one flat buffer)."""
    if world() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset: offset + g.numel()].view_as(g)
        offset += g.numel()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
