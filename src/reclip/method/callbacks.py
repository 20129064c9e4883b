"""Hooks into ``ReCLIP.fit`` (also importable as ``reclip.callbacks``): subclass ``Callback`` and pass instances as ``callbacks=``.

Callbacks run on the main process only (rank 0 under torchrun).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..checks import shown
from ..errors import ArgumentError
from ..progress import is_quiet

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


EPOCH_KEYS = ("top1", "top1_t", "top1_v", "pseudo_label_acc_t", "pseudo_label_acc_v", "agreement", "head_agreement")
LOSS_KEYS = ("loss_t", "loss_v")


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line of an epoch record of ``metrics["epochs"]``. Record k was evaluated after k
    epochs of training and holds the losses and time of the pass that followed, so it reads
    ``after 0/2 epochs: top1 ...; epoch 1: loss_t ..., 1.3 s``, as report.png's x axis and
    the record's ``epoch`` key count."""
    line = "  ".join([f"after {record['epoch']}/{epochs} epochs:"]
                     + [f"{key} {record[key]:.4f}" for key in EPOCH_KEYS if key in record])
    trained = [f"{key} {record[key]:.4f}" for key in LOSS_KEYS if key in record]
    if "seconds" in record:
        trained.append(f"{record['seconds']:.1f} s")
    return line + (f";  epoch {record['epoch'] + 1}: " + "  ".join(trained) if trained else "")


def final_line(metrics: dict[str, Any]) -> str | None:
    """The closing ``after N/N epochs`` line of a self-training run: the adapted model's final
    accuracies (when labels exist) and its heads' agreement; None for the other modes."""
    history = metrics.get("epochs")
    if not history:
        return None
    adapted = metrics.get("final_adapted", metrics["final"])
    record = {"epoch": len(history), **{k: v for k, v in adapted.items() if k in EPOCH_KEYS}}
    if "safeguard" in metrics:
        record["head_agreement"] = metrics["safeguard"]["agreement"]
    line = epoch_line(record, len(history)) + "  (the adapted model"
    return line + ("; the safeguard keeps zero-shot's predictions)" if "final_adapted" in metrics else ")")


class PrintProgress(Callback):
    """Prints where a run resumed and one line per epoch (what the command line shows);
    silent under ``reclip.progress.set_quiet`` (the CLI's ``--quiet``)."""

    def on_fit_start(self, info: dict[str, Any]) -> None:
        if info["resumed"] and not is_quiet():
            print(f"resuming after epoch {info['resumed_epoch']} of {info['epochs']}")

    def on_epoch_end(self, record: dict[str, Any], epochs: int) -> None:
        if not is_quiet():
            print(epoch_line(record, epochs), flush=True)

    def on_fit_end(self, result: "ReclipResult") -> None:
        if not is_quiet() and (line := final_line(result.metrics)) is not None:
            print(line, flush=True)


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
