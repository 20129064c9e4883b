"""``ReclipConfig``: every setting of a run, validated when it is built.

The defaults and why each was chosen are in docs/method.md ("Defaults"). Errors are
``ConfigError``s naming the parameter (``mode must be one of ...``); the command line
turns the parameter name into its flag.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .. import checks
from ..errors import ArgumentError

MODES = ("reclip", "v-only", "t-only", "transductive", "transclip", "zero-shot")
#: how a reclip run's prediction is made from T's and V's heads (``heads.combine``); ``head_fusion="auto"``
#: resolves to one of them
FUSION_RULES = ("average", "calibrated", "v")
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
    "v_head": ("auto", "centroids", "linear", "blend"),
    "v_head_targets": ("agreed", "posterior"),
    "head_fusion": ("auto",) + FUSION_RULES,
    "class_balance": ("off", "estimated"),
}
MANY_CLASSES = 500      # above this many classes the projection keeps MANY_CLASSES_CUT_DIM dimensions
MANY_CLASSES_CUT_DIM = 250
#: Label-propagation alpha when none is given: the paper's for contrastive (CLIP-family)
#: models; for towers trained apart (the bridge), the value chosen on the dev targets.
ALPHA_CONTRASTIVE = 0.99
ALPHA_APART = 0.95


class ConfigError(ArgumentError):
    """A bad value for one parameter; ``param`` names it."""


@dataclass(frozen=True)
class ModelProfile:
    """The settings that depend on the model, declared per kind of model. By how its towers were
    trained (``family``: ``contrastive``, the CLIP family, or ``apart``, the ``bridge``):
    ``alpha`` (label propagation's) and ``image_edges`` (which features the graph compares images
    by). By its image tower's normalisation layers (``image_norm``, ``DualEncoder.image_norm``):
    ``v_tower`` (whether V trains the tower's norm affines) and ``v_bn_blend`` (the target's share
    of its BatchNorm statistics). The apart values and the BatchNorm rule were chosen on the dev
    targets (docs/method.md, "Defaults" and "Norm-aware V")."""

    name: str
    alpha: float
    image_edges: str
    image_norm: str
    v_tower: str
    v_bn_blend: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: (alpha, image_edges) by how the towers were trained: together (``contrastive``) or ``apart``.
FAMILIES: dict[str, tuple[float, str]] = {"contrastive": (ALPHA_CONTRASTIVE, "projected"),
                                          "apart": (ALPHA_APART, "full")}
#: How V adapts an image tower, by its normalisation layers (``DualEncoder.image_norm``):
#: (v_tower, v_bn_blend). LayerNorm towers (CLIP ViTs) train their affines as in the paper;
#: BatchNorm towers (the bridge's EfficientNet, CLIP ResNets) as chosen on the dev targets.
NORM_RULES: dict[str, tuple[str, float]] = {"layernorm": ("train", 0.0), "batchnorm": ("frozen", 0.0),
                                             "none": ("frozen", 0.0)}
#: neighbours per image when ``k`` is None: label propagation's (the paper's) and TransCLIP's (its paper's)
K_PROPAGATION = 20
K_TRANSCLIP = 3
STAGES = ("run", "propagation", "training", "safeguard", "runtime")


def profile_for(contrastive: bool, image_norm: str = "layernorm") -> ModelProfile:
    """The ``ModelProfile`` of a model whose towers were trained together (``contrastive``) or
    apart, with an image tower of normalisation kind ``image_norm`` (``NORM_RULES``' keys): the
    one place where V's adaptation is resolved from the tower."""
    if image_norm not in NORM_RULES:
        raise ConfigError("image_norm", f"must be one of {', '.join(NORM_RULES)}; got {image_norm!r}")
    family = "contrastive" if contrastive else "apart"
    return ModelProfile(f"{family}/{image_norm}", *FAMILIES[family], image_norm, *NORM_RULES[image_norm])


def setting(default: Any, stage: str, help: str, kind: type | None = None, modes: tuple[str, ...] = MODES) -> Any:
    """A ``ReclipConfig`` field: its ``default``, the ``stage`` that reads it, the ``help`` of its
    command-line flag (generated from this), the flag's value type ``kind`` (default: the
    default's) and the ``modes`` that use it."""
    return field(default=default, metadata={"stage": stage, "help": help, "kind": kind or type(default),
                                             "modes": modes})


SELF_TRAINING = TRAINING_MODES
PROPAGATING = TRAINING_MODES + ("transductive",)
TRANSDUCTIVE = PROPAGATING + ("transclip",)


@dataclass
class ReclipConfig:
    """Settings of one run of ``reclip.ReCLIP``, grouped by the stage that reads them
    (``stage_settings``); each field's help (``fields(ReclipConfig)[i].metadata``) is also its
    command-line flag's, and its metadata names the modes that use it: a field set to other
    than its default in another mode is refused (``ConfigError``), never silently dropped.
    Model-dependent fields left at None/``auto`` are resolved by ``for_model`` from the
    model's ``ModelProfile``.

    mode: ``reclip`` (both branches), ``v-only``, ``t-only``, ``transductive`` (label
      propagation alone, no training), ``transclip`` (the published TransCLIP, no
      training) or ``zero-shot`` (the prompt-ensemble baseline).
    Propagation: k, alpha, cut_dim, knn, knn_backend, image_edges, project.
    Training: epochs, epoch_max, batch_size, lr_v, lr_t, momentum, weight_decay, v_loss,
      v_graph, v_tower, v_bn_blend, v_head, v_head_targets, t_template, agreement_filter, pseudo_labels, head_fusion, class_balance,
      seed.
    Safeguard (reclip mode): safeguard, safeguard_gain, safeguard_level, calibrate.
    Runtime (how fast, never what): workers, threads (chosen together within the cores this
      process may use: ``reclip.runtime.budget``), cache.
    """

    mode: str = setting("reclip", "run", "reclip (both branches), v-only, t-only, transductive (label propagation "
                        "alone) or transclip (the published TransCLIP), both training-free, or zero-shot")
    epochs: int | None = setting(None, "training", "training epochs (default: min(epoch-max, N // 5000 + 2))",
                                 int, SELF_TRAINING)
    epoch_max: int = setting(100, "training", "most training epochs when --epochs is not given", int, SELF_TRAINING)
    batch_size: int = setting(64, "training", "images per batch (feature extraction and training)")
    lr_v: float = setting(1e-3, "training", "ReCLIP-V learning rate", float, SELF_TRAINING)
    lr_t: float = setting(1e-3, "training", "ReCLIP-T learning rate", float, SELF_TRAINING)
    momentum: float = setting(0.9, "training", "SGD momentum of both branches", float, SELF_TRAINING)
    weight_decay: float = setting(1e-4, "training", "SGD weight decay of both branches", float, SELF_TRAINING)
    k: int | None = setting(None, "propagation", f"neighbours per image in the graph (default: {K_PROPAGATION} for "
                            f"label propagation, {K_TRANSCLIP} for transclip)", int, TRANSDUCTIVE)
    alpha: float | None = setting(None, "propagation", f"label-propagation alpha (default: {ALPHA_CONTRASTIVE} on "
                                  f"CLIP-family models, {ALPHA_APART} on the bridge)", float, PROPAGATING)
    cut_dim: int | None = setting(None, "propagation", "projection rank r (default: D, or 250 above 500 classes "
                                  "as the authors' ImageNet runs)", int, PROPAGATING)
    knn: str = setting("exact", "propagation", "exact or approximate k-NN graph", str, TRANSDUCTIVE)
    knn_backend: str | None = setting(None, "propagation", "k-NN library, torch or faiss (default: torch); "
                                      "every backend gives the same graph", str, PROPAGATING)
    image_edges: str = setting("auto", "propagation", "label-propagation graph: image-image similarities in the "
                               "projection space (projected, the paper's) or of the full features (full); default "
                               "auto: projected on CLIP-family models, full on the bridge", str, PROPAGATING)
    v_loss: str = setting("reference", "training", "reference: the authors' mean(CE*mask)/sum(mask), V's step "
                          "divided by the batch size (default); mean: masked mean like T", str, SELF_TRAINING)
    v_graph: str = setting("text", "training", "V's label-propagation class nodes: text (the original text "
                           "embeddings, as the authors' code; default) or centroids (V's current classifier)",
                           str, SELF_TRAINING)
    v_tower: str = setting("auto", "training", "train (V trains its image tower's norm affines), frozen (V's "
                           "classifier still follows its label-propagation centroids) or auto (default: by the "
                           "image tower's norm layers: train for LayerNorm towers such as CLIP ViTs, as the paper; "
                           "frozen for BatchNorm towers such as the bridge's and CLIP ResNets', chosen on dev "
                           "targets)", str, SELF_TRAINING)
    v_bn_blend: float | None = setting(None, "training", "the target's share w of V's BatchNorm running statistics, "
                                       "estimated on the target images before training: (1 - w) source + w target "
                                       "(Schneider et al. 2020's n / (N + n); 0: the source statistics, 1: AdaBN); "
                                       "default: by the image tower's norm layers (0 on every tower today)",
                                       float, SELF_TRAINING)
    v_head: str = setting("auto", "training", "V's classifier: centroids (the label-propagation centroids of its "
                          "pseudo labels, the paper's), linear (a logistic-regression head trained on V's "
                          "features and the pseudo labels both branches agree on) or blend (the two, each at the "
                          "temperature that makes its mean confidence label propagation's, averaged); default "
                          "auto: blend when V's tower is frozen (BatchNorm towers: the bridge, CLIP ResNets; "
                          "chosen on dev targets), centroids when it trains", str, ("reclip", "v-only"))
    v_head_targets: str = setting("agreed", "training", "what V's linear head (v_head linear or blend) is fitted "
                                  "to: agreed (the pseudo labels both branches agree on) or posterior (V's "
                                  "label-propagation probabilities of every image, as soft targets)", str,
                                  ("reclip", "v-only"))
    t_template: str | None = setting(None, "training", "the template ReCLIP-T trains and classifies with, put first "
                                     "among the templates (default: the first template)", str)
    project: bool = setting(True, "propagation", "ablation: build the label-propagation graph on unprojected "
                            "features", bool, PROPAGATING)
    agreement_filter: bool = setting(True, "training", "ablation: each branch trains on all its pseudo labels, not "
                                     "only the agreed ones", bool, SELF_TRAINING)
    pseudo_labels: str = setting("propagated", "training", "ablation: zero-shot trains on each branch's own "
                                 "predictions instead of propagated labels", str, SELF_TRAINING)
    # heads fused and classes kept in balance (docs/method.md, "Heads fused by what they know",
    # "Classes kept in balance"); average and off are the paper's
    head_fusion: str = setting("auto", "training", "reclip mode: how T's and V's heads make the prediction: "
                               "average (their logits, the paper's), calibrated (each head's log-probabilities at "
                               "its own temperature, fitted so its mean confidence equals label propagation's, "
                               "then averaged) or v (V's head alone; T still trains and chooses V's training "
                               "samples); default auto: v with V's trained head (linear or blend), average with "
                               "its centroids",
                               str, ("reclip",))
    class_balance: str = setting("off", "training", "pseudo labels: off (label propagation's argmax, the paper's; "
                                 "default) or estimated (propagated posteriors moved to the class proportions "
                                 "estimated by EM on them, so a rare class is not absorbed and an absent one not "
                                 "forced in)", str, SELF_TRAINING)
    safeguard: float = setting(0.6, "safeguard", "reclip mode: keep the zero-shot predictions when T's and V's "
                               "heads agree on less than this share of the images at the end, beyond its noise "
                               "(see --safeguard-level; chosen on dev targets; 0: off)", float, ("reclip",))
    safeguard_gain: float = setting(0.0, "safeguard", "reclip mode: keep the zero-shot predictions when label "
                                    "propagation's estimate of the adapted predictions' top-1 gain over zero-shot "
                                    "is not above this beyond its noise (see --safeguard-level; -1: off)", float,
                                    ("reclip",))
    safeguard_level: float = setting(0.8, "safeguard", "reclip mode: one-sided confidence of both safeguard "
                                     "checks, which compare each signal's bound over the N images, not its value, "
                                     "with its threshold (chosen on dev targets; 0.5: the values, the rule before)",
                                     float, ("reclip",))
    calibrate: bool = setting(True, "safeguard", "reclip mode: keep the raw confidences (default: a temperature "
                              "makes their mean equal label propagation's mean confidence on the frozen model)",
                              bool, ("reclip",))
    seed: int = setting(0, "training", "shuffling and initialisation seed")
    workers: int | None = setting(None, "runtime", "data-loading processes (default: with --threads, within the "
                                  "cores this process may use)", int)
    threads: int | None = setting(None, "runtime", "torch's intra-op threads (default: the cores this process may "
                                  "use, less the workers)", int)
    cache: bool = setting(True, "runtime", "do not read or write the image-feature cache")

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                shown = ", ".join("None" if a is None else a for a in allowed)
                raise ConfigError(name, f"must be one of {shown}; got {value!r}")
        _integer(self, "epochs", minimum=0, optional=True)
        _integer(self, "epoch_max", minimum=1)
        _integer(self, "batch_size", minimum=1)
        _integer(self, "k", minimum=1, optional=True)
        _integer(self, "cut_dim", minimum=2, optional=True)
        self.seed = checks.seed(self.seed, error=ConfigError)
        _integer(self, "workers", minimum=0, optional=True)
        _integer(self, "threads", minimum=1, optional=True)
        _number(self, "lr_v", 0.0, 10.0)
        _number(self, "lr_t", 0.0, 10.0)
        _number(self, "weight_decay", 0.0, 1.0, high_open=True)
        _number(self, "momentum", 0.0, 1.0, high_open=True)
        if self.alpha is not None:
            _number(self, "alpha", 0.0, 1.0, low_open=True, high_open=True)
        if self.v_bn_blend is not None:
            _number(self, "v_bn_blend", 0.0, 1.0)
        _number(self, "safeguard", 0.0, 1.0)
        _number(self, "safeguard_gain", -1.0, 1.0)
        _number(self, "safeguard_level", 0.5, 1.0, high_open=True)
        for name in ("cache", "project", "agreement_filter", "calibrate"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be True or False; got {getattr(self, name)!r}")
        if self.t_template is not None and (not isinstance(self.t_template, str) or "{}" not in self.t_template):
            raise ConfigError("t_template", f"must be a template with {{}} where the class name goes; "
                                            f"got {self.t_template!r}")
        self._check_v_head_targets(self.v_head)
        for f in fields(self):
            if self.mode not in f.metadata["modes"] and getattr(self, f.name) != f.default:
                raise ConfigError(f.name, f"is not used in mode {self.mode!r} (only in {', '.join(f.metadata['modes'])}); "
                                          "leave it out")

    # --- derived settings --------------------------------------------------------------
    def for_model(self, contrastive: bool, image_norm: str = "layernorm") -> "ReclipConfig":
        """This config resolved for a model whose towers were trained together contrastively
        (``contrastive``, the CLIP family) or apart, with an image tower of norm kind
        ``image_norm`` (``DualEncoder.image_norm``): ``resolve(profile_for(contrastive, image_norm))``."""
        return self.resolve(profile_for(contrastive, image_norm))

    def resolve(self, profile: ModelProfile) -> "ReclipConfig":
        """This config with every default that depends on the model or the mode filled in, for
        the fields the mode uses: ``v_tower="auto"``, ``v_bn_blend=None``, ``alpha=None`` and
        ``image_edges="auto"`` from ``profile``, ``k=None`` from the mode (``K_TRANSCLIP`` for transclip, else
        ``K_PROPAGATION``); ``v_head="auto"`` from the resolved ``v_tower`` (``blend`` when V's tower
        is frozen, else the paper's ``centroids``) and ``head_fusion="auto"`` from the resolved ``v_head``
        (``v`` with a trained head, linear or blend, else the paper's ``average``)."""
        v_tower = profile.v_tower if self.v_tower == "auto" else self.v_tower
        v_head = ("blend" if v_tower == "frozen" else "centroids") if self.v_head == "auto" else self.v_head
        resolved = {"v_tower": v_tower, "v_head": v_head,
                    "head_fusion": ("average" if v_head == "centroids" else "v") if self.head_fusion == "auto"
                    else self.head_fusion,
                    "v_bn_blend": profile.v_bn_blend if self.v_bn_blend is None else self.v_bn_blend,
                    "image_edges": profile.image_edges if self.image_edges == "auto" else self.image_edges,
                    "alpha": profile.alpha if self.alpha is None else self.alpha,
                    "k": (K_TRANSCLIP if self.mode == "transclip" else K_PROPAGATION) if self.k is None else self.k}
        used = {f.name for f in fields(self) if self.mode in f.metadata["modes"]}
        if "v_head" in used:
            self._check_v_head_targets(v_head)
        return replace(self, **{name: value for name, value in resolved.items() if name in used})

    def _check_v_head_targets(self, v_head: str) -> None:
        """Refuse ``v_head_targets`` other than its default where V's head, as given or as resolved
        (``v_head``), is the centroids: there is no linear head for it to act on."""
        if v_head == "centroids" and self.v_head_targets != "agreed":
            raise ConfigError("v_head_targets", "only sets what V's linear head is fitted to, and V's head is the "
                                                "centroids here (v_head centroids, or auto with V's tower trained); "
                                                "set v_head to linear or blend, or leave it out")

    def stage_settings(self, stage: str) -> dict[str, Any]:
        """The fields read by ``stage`` (one of ``STAGES``), by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["stage"] == stage}

    def propagation_settings(self, num_classes: int) -> dict[str, Any]:
        """The keyword arguments of ``label_propagation`` for ``num_classes`` classes (the
        projection rank resolved); the config must be resolved (``for_model``)."""
        settings = self.stage_settings("propagation")
        settings["cut_dim"] = self.projection_rank(num_classes)
        return settings

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
            raise ConfigError("v_tower", "is 'auto': resolve it with for_model(model.contrastive, model.image_norm) "
                                         "first")
        return self.uses_v and self.v_tower == "train"

    @property
    def adapts_v_tower(self) -> bool:
        """V's image tower differs from the frozen one: its affines train or its BatchNorm
        statistics are blended with the target's (``for_model`` resolved)."""
        if self.v_bn_blend is None:
            raise ConfigError("v_bn_blend", "is None: resolve it with for_model(...) first")
        return self.trains_v or (self.uses_v and self.v_bn_blend > 0)

    @property
    def trains_t(self) -> bool:
        return self.mode in ("reclip", "t-only")

    def to_dict(self) -> dict[str, Any]:
        """Every setting that shapes the results (the runtime-only ones left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["stage"] != "runtime"}


def _integer(config: ReclipConfig, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    setattr(config, name, checks.whole_number(value, name, minimum=minimum, error=ConfigError))


def _number(config: ReclipConfig, name: str, low: float, high: float, *,
            low_open: bool = False, high_open: bool = False) -> None:
    value = checks.real_number(getattr(config, name), name, error=ConfigError)
    setattr(config, name, value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(name, f"must be in {interval}; got {value:g}")
