"""Hooks into ``ReCLIP.fit`` (also importable as ``reclip.callbacks``): subclass ``Callback`` and pass instances as ``callbacks=``.

Callbacks run on the main process only (rank 0 under torchrun).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..checks import shown
from ..errors import ArgumentError

if TYPE_CHECKING:
    from .result import ReclipResult


class Callback:
    """Override the hooks you need; each default does nothing."""

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """Before the first epoch. ``info``: ``n`` images, ``epochs`` planned, ``resumed_epoch``
        (epochs already done by a resumed checkpoint, 0 for a fresh run), ``resumed`` (bool)."""

    def on_epoch_end(self, record: dict[str, Any], epochs: int) -> None:
        """After each training epoch; ``record`` is that epoch's entry of ``metrics["epochs"]``."""

    def on_fit_end(self, result: "ReclipResult") -> None:
        """After the final evaluation (and after the outputs were written, when ``out`` was given)."""


class PrintProgress(Callback):
    """Prints where a run resumed and one line per epoch (what the command line shows)."""

    def on_fit_start(self, info: dict[str, Any]) -> None:
        if info["resumed"]:
            print(f"resuming after epoch {info['resumed_epoch']} of {info['epochs']}" if info["resumed_epoch"]
                  else "no checkpoint to resume from; starting from the beginning")

    def on_epoch_end(self, record: dict[str, Any], epochs: int) -> None:
        print(epoch_summary(record, epochs), flush=True)


def epoch_summary(stats: dict, epochs: int) -> str:
    """One line of an epoch record: its accuracies (when labels exist), agreement, losses, time."""
    parts = [f"epoch {stats['epoch'] + 1}/{epochs}"]
    for key in ("top1", "top1_t", "top1_v", "pseudo_label_acc_t", "pseudo_label_acc_v", "agreement", "head_agreement",
                "loss_t", "loss_v"):
        if key in stats:
            parts.append(f"{key} {stats[key]:.4f}")
    parts.append(f"{stats['seconds']:.1f} s")
    return "  ".join(parts)


def check_callbacks(callbacks: Any, name: str = "callbacks") -> list[Callback]:
    """``callbacks`` as a list of ``Callback`` instances (one is taken as a list of one); else one
    line naming ``name``."""
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        raise ArgumentError(name, f"must be a list of reclip.Callback objects; got {shown(callbacks)}")
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise ArgumentError(name, f"entry {i} must be a reclip.Callback (subclass it); got {shown(callback)}")
    return list(callbacks)
