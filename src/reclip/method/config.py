"""``ReclipConfig``: every setting of a run, validated when it is built.

The defaults and why each was chosen are in docs/method.md ("Defaults"). Errors are
``ConfigError``s naming the parameter (``mode must be one of ...``); the command line
turns the parameter name into its flag.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import ReclipError

MODES = ("reclip", "v-only", "t-only", "transductive", "transclip", "zero-shot")
TRAINING_MODES = ("reclip", "v-only", "t-only")
CHOICES: dict[str, tuple[Any, ...]] = {
    "mode": MODES,
    "v_loss": ("reference", "mean"),
    "v_graph": ("centroids", "text"),
    "v_tower": ("auto", "train", "frozen"),
    "knn": ("exact", "approx"),
    "knn_backend": (None, "torch", "faiss"),
    "image_edges": ("auto", "projected", "full"),
    "pseudo_labels": ("propagated", "zero-shot"),
}
# fields that change how fast a run goes, never what it computes (left out of resume identity)
RUNTIME_FIELDS = ("workers", "threads", "cache")
MANY_CLASSES = 500      # above this many classes the projection keeps MANY_CLASSES_CUT_DIM dimensions
MANY_CLASSES_CUT_DIM = 250
#: Label-propagation alpha when none is given: the paper's for contrastive (CLIP-family)
#: models; for towers trained apart (the bridge), the value chosen on the dev targets.
ALPHA_CONTRASTIVE = 0.99
ALPHA_APART = 0.95


class ConfigError(ReclipError):
    """A bad value for one parameter; ``param`` names it."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param} {problem}")
        self.param = param
        self.problem = problem


@dataclass
class ReclipConfig:
    """Settings of one run of ``reclip.ReCLIP``.

    mode: ``reclip`` (both branches), ``v-only``, ``t-only``, ``transductive`` (label
      propagation alone, no training), ``transclip`` (TransCLIP-style transduction, no
      training) or ``zero-shot`` (the prompt-ensemble baseline).
    epochs: training epochs; None means ``min(epoch_max, N // 5000 + 2)``.
    batch_size, lr_v, lr_t, momentum, weight_decay: SGD settings of the two branches.
    k, alpha, cut_dim, knn, knn_backend: label propagation (neighbours, propagation weight,
      projection rank - None means D, or 250 above 500 classes -, exact or approximate k-NN,
      and which k-NN library: None picks the fastest on this machine). ``alpha=None`` is
      resolved by ``for_model``: ``ALPHA_CONTRASTIVE`` (0.99, the paper's) for a CLIP-family
      model, ``ALPHA_APART`` (0.95, chosen on the dev targets) for towers trained apart.
    image_edges: where the label-propagation graph compares two images: ``projected`` (the
      projection space, as every other similarity: the paper's graph), ``full`` (their full
      features; edges to class nodes stay in the projection space) or ``auto``: ``projected``
      for a CLIP-family model, ``full`` for towers trained apart (the bridge, chosen on the dev
      targets); ``for_model`` resolves it.
    v_loss: ``reference`` (the authors' mean(CE*mask)/sum(mask)) or ``mean`` (masked mean).
    v_graph: V's class nodes: ``centroids`` (its current classifier) or ``text`` (the original
      text embeddings, as the authors' code).
    v_tower: ``train`` (V trains its image tower's norm affines), ``frozen`` (V's classifier
      still follows its label-propagation centroids; the tower does not train) or ``auto``:
      ``train`` for a contrastively trained CLIP-family model, ``frozen`` for a model whose
      towers were trained apart (the bridge); ``for_model`` resolves it.
    t_template: the template ReCLIP-T trains and classifies with; None: the first template.
    project, agreement_filter, pseudo_labels: ablations of the paper's analysis. ``project=False``
      builds the label-propagation graph on unprojected features; ``agreement_filter=False``
      trains each branch on all its pseudo labels, not only those both branches agree on;
      ``pseudo_labels="zero-shot"`` trains on each branch's own predictions instead of
      propagated labels.
    safeguard: in ``reclip`` mode, keep the zero-shot predictions when T's and V's heads agree on
      less than this share of the images at the end (0 turns this check off; the default
      was chosen on the dev targets by benchmarks/choose_safeguard.py).
    safeguard_gain: in ``reclip`` mode, also keep the zero-shot predictions when the top-1 gain of
      the adapted predictions over zero-shot, estimated with label propagation's probabilities
      on the frozen model as soft labels, is at most this (a fraction in [-1, 1]; -1 turns this
      check off; 0: no estimated gain, no adaptation).
    calibrate: in ``reclip`` mode, scale the final logits by a temperature that makes their mean
      confidence equal label propagation's mean confidence on the frozen model (label-free
      calibration).
    seed: shuffling and initialisation seed.
    workers, threads: data-loading processes and torch's intra-op threads; None chooses them
      together within the cores this process may use (``reclip.runtime.budget``).
    cache: use the feature cache.
    """

    mode: str = "reclip"
    epochs: int | None = None
    epoch_max: int = 100
    batch_size: int = 64
    lr_v: float = 1e-3
    lr_t: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    k: int = 20
    alpha: float | None = None
    cut_dim: int | None = None
    knn: str = "exact"
    knn_backend: str | None = None
    image_edges: str = "auto"
    v_loss: str = "reference"
    v_graph: str = "text"
    v_tower: str = "auto"
    t_template: str | None = None
    project: bool = True
    agreement_filter: bool = True
    pseudo_labels: str = "propagated"
    safeguard: float = 0.6
    safeguard_gain: float = 0.0
    calibrate: bool = True
    seed: int = 0
    workers: int | None = None
    threads: int | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                shown = ", ".join("None" if a is None else a for a in allowed)
                raise ConfigError(name, f"must be one of {shown}; got {value!r}")
        _integer(self, "epochs", minimum=0, optional=True)
        _integer(self, "epoch_max", minimum=1)
        _integer(self, "batch_size", minimum=1)
        _integer(self, "k", minimum=1)
        _integer(self, "cut_dim", minimum=2, optional=True)
        _integer(self, "seed", minimum=0)
        _integer(self, "workers", minimum=0, optional=True)
        _integer(self, "threads", minimum=1, optional=True)
        _number(self, "lr_v", 0.0, 10.0)
        _number(self, "lr_t", 0.0, 10.0)
        _number(self, "weight_decay", 0.0, 1.0, high_open=True)
        _number(self, "momentum", 0.0, 1.0, high_open=True)
        if self.alpha is not None:
            _number(self, "alpha", 0.0, 1.0, low_open=True, high_open=True)
        _number(self, "safeguard", 0.0, 1.0)
        _number(self, "safeguard_gain", -1.0, 1.0)
        for name in ("cache", "project", "agreement_filter", "calibrate"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be True or False; got {getattr(self, name)!r}")
        if self.t_template is not None and (not isinstance(self.t_template, str) or "{}" not in self.t_template):
            raise ConfigError("t_template", f"must be a template with {{}} where the class name goes; "
                                            f"got {self.t_template!r}")

    # --- derived settings --------------------------------------------------------------
    def for_model(self, contrastive: bool) -> "ReclipConfig":
        """This config with ``v_tower="auto"``, ``alpha=None`` and ``image_edges="auto"`` resolved
        for a model whose towers were trained together contrastively (``contrastive``, the CLIP
        family: ``train``, ``ALPHA_CONTRASTIVE`` and ``projected``) or not (``frozen``,
        ``ALPHA_APART`` and ``full``)."""
        resolved = self
        if self.v_tower == "auto":
            resolved = replace(resolved, v_tower="train" if contrastive else "frozen")
        if self.image_edges == "auto":
            resolved = replace(resolved, image_edges="projected" if contrastive else "full")
        if self.alpha is None:
            resolved = replace(resolved, alpha=ALPHA_CONTRASTIVE if contrastive else ALPHA_APART)
        return resolved

    def num_epochs(self, n: int) -> int:
        """Training epochs for ``n`` images."""
        return self.epochs if self.epochs is not None else min(self.epoch_max, n // 5000 + 2)

    def projection_rank(self, num_classes: int) -> int | None:
        """``cut_dim`` for label propagation: the given one, else 250 above 500 classes (the
        authors' ImageNet setting), else None (the full dimension D)."""
        if self.cut_dim is not None:
            return self.cut_dim
        return MANY_CLASSES_CUT_DIM if num_classes > MANY_CLASSES else None

    @property
    def trains(self) -> bool:
        """True for the self-training modes (reclip, v-only, t-only)."""
        return self.mode in TRAINING_MODES

    @property
    def uses_v(self) -> bool:
        """ReCLIP-V takes part (its classifier and pseudo labels)."""
        return self.mode in ("reclip", "v-only")

    @property
    def trains_v(self) -> bool:
        """ReCLIP-V's image-tower norm affines train (``v_tower`` resolved by ``for_model``)."""
        if self.v_tower == "auto":
            raise ConfigError("v_tower", "is 'auto': resolve it with for_model(model.contrastive) first")
        return self.uses_v and self.v_tower == "train"

    @property
    def trains_t(self) -> bool:
        return self.mode in ("reclip", "t-only")

    def to_dict(self) -> dict[str, Any]:
        """Every setting that shapes the results (the runtime-only ones left out)."""
        d = asdict(self)
        for name in RUNTIME_FIELDS:
            d.pop(name)
        return d

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _integer(config: ReclipConfig, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be a whole number; got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}; got {value}")


def _number(config: ReclipConfig, name: str, low: float, high: float, *,
            low_open: bool = False, high_open: bool = False) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number; got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(name, f"must be in {interval}; got {value:g}")
