"""ReCLIP's cross-modality self-training (docs/method.md, "The loop"), in one place.

Two branches share ONE pretrained model:

- ReCLIP-V trains only the affine parameters of the IMAGE tower's normalisation layers.
  Its classifier is the label-propagation centroids of its own features; its graph's class
  nodes are that classifier (``v_graph="centroids"``) or the original text embeddings.
- ReCLIP-T trains only the affine parameters of the TEXT tower's normalisation layers.
  Its image features come from the frozen image tower, computed once and cached.

V never reads the text tower after the start (its class nodes are its centroids or the
original text embeddings, computed once) and T never runs the image tower (its image
features are cached), so both branches live in the same weights without any swapping.
Towers run under bf16 autocast where it is native; every logit, text head and input of
label propagation is float32.

Each epoch: evaluate -> propagate -> train on the labels both branches agree on ->
re-encode the full-template text embeddings. After the last epoch the model is evaluated
once more: that evaluation is the reported ``final`` (no label ever selects an epoch).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import ImageDataset, collate
from ..data.pixels import DecodedImages, split_transform
from .. import distributed
from ..features import Features, default_workers, encode_dataset
from ..models.base import DualEncoder
from ..errors import ReclipError
from ..precision import autocast, full_precision
from ..progress import progress
from .config import ReclipConfig
from .heads import Heads, blend_head, fuse, head_logits, linear_head, text_heads
from .priors import balanced_labels
from .propagation import class_centroids
from .safeguard import confidence_target, estimated_gain, head_agreement
from .transduce.base import Transducer, Transduction
from .weights import blend_statistics, estimating_statistics, load_into, snapshot
from .transduce.peers import LabelPropagation
from .zeroshot import LOGIT_SCALE, class_embeddings

log = logging.getLogger(__name__)

@dataclass
class RunState:
    """What a checkpoint must hold to resume a run exactly."""

    epoch: int                                   # epochs completed
    heads: Heads
    history: list[dict] = field(default_factory=list)
    passes_forward: float = 0.0                  # image-tower forward passes per image so far
    passes_backward: float = 0.0

    def finish_epoch(self, stats: dict) -> None:
        """Record a finished epoch's ``stats``."""
        self.history.append(stats)
        self.epoch += 1
        log.info("epoch %d: %s", self.epoch - 1, stats)

    def count_v_pass(self, share: float) -> None:
        """V ran forward and backward on ``share`` of the images (the agreed ones)."""
        self.passes_forward += share
        self.passes_backward += share


def configure_model(model: DualEncoder, config: ReclipConfig) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Freeze everything but the norm affines of the trained branches; returns (V params, T params).

    The module stays in eval mode: BatchNorm running statistics and dropout stay frozen.
    """
    model.module.eval()
    model.module.requires_grad_(False)
    params_v = model.image_norm_parameters() if config.trains_v else []
    params_t = model.text_norm_parameters() if config.trains_t else []
    for p in params_v + params_t:
        p.requires_grad_(True)
    return params_v, params_t


def make_optimizers(params_v: list[nn.Parameter], params_t: list[nn.Parameter], config: ReclipConfig,
                    optimizer_state: dict[str, dict] | None) -> dict[str, torch.optim.SGD | None]:
    """{"v": V's SGD, "t": T's} (None for a branch that does not train), resumed from
    ``optimizer_state`` when given."""
    optimizers = {"v": make_optimizer(params_v, config.lr_v, config), "t": make_optimizer(params_t, config.lr_t, config)}
    for name, opt in optimizers.items():
        if opt is not None and optimizer_state and name in optimizer_state:
            opt.load_state_dict(optimizer_state[name])
    return optimizers


def make_optimizer(params: list[nn.Parameter], lr: float, config: ReclipConfig) -> torch.optim.SGD | None:
    if not params:
        return None
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def initial_state(model: DualEncoder, classnames: list[list[str]], templates: list[str]) -> RunState:
    t_short, t_full = text_heads(model, classnames, templates)
    return RunState(epoch=0, heads=Heads(v_classifier=t_full.clone(), t_classifier=t_short,
                                         t_full=t_full, t_original=t_full.clone()))


def masked_ce_sum(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy over the samples where ``mask`` is 1."""
    return (cross_entropy(logits.float(), targets, reduction="none") * mask).sum()


def adapt(model: DualEncoder, dataset: ImageDataset, frozen: Features, templates: list[str],
          config: ReclipConfig, state: RunState | None = None,
          on_epoch_end: Callable[[RunState, dict[str, torch.optim.Optimizer | None]], None] | None = None,
          optimizer_state: dict[str, dict] | None = None, posterior: torch.Tensor | None = None,
          propagate: Transducer | None = None) -> tuple[RunState, torch.Tensor]:
    """Run ReCLIP self-training on the readable images of ``dataset`` (``frozen``: the frozen
    tower's N x D features; T trains with ``templates[0]``; ``config`` resolved by ``for_model``).

    ``state``/``optimizer_state`` from a checkpoint resume after ``state.epoch`` epochs;
    ``on_epoch_end(state, optimizers)`` runs on every rank after every epoch; ``posterior``
    (N x C, ``safeguard.frozen_posterior``) makes each epoch record its ``estimated_gain``;
    ``propagate`` labels the pseudo labels (default: label propagation with the config's
    settings). A non-finite loss or parameter is a ``ReclipError`` before that epoch's callback.
    Returns the final state and V's final N x D features (``ReCLIP.fit`` fuses the final heads).
    """
    n, classnames = len(frozen.indices), dataset.classnames
    if propagate is None:
        propagate = LabelPropagation(config.propagation_settings(len(classnames)), model.device)
    params_v, params_t = configure_model(model, config)
    optimizers = make_optimizers(params_v, params_t, config, optimizer_state)
    state = state if state is not None else initial_state(model, classnames, templates)
    images, f_v = prepare_v(model, dataset, frozen, config, state)
    first_epoch, confidence = state.epoch, fusion_confidence(config, frozen.features, state.heads, propagate, posterior)
    for epoch in range(first_epoch, config.num_epochs(n)):
        start = time.perf_counter()
        stats, pseudo_t, pseudo_v = epoch_signals(config, frozen, f_v, state.heads, propagate, posterior, epoch,
                                                  confidence)
        # 3. one shuffled pass over the agreed samples (all samples without the agreement filter)
        train_start = time.perf_counter()
        stats.update(train_pass(model, images, classnames, frozen, pseudo_t, pseudo_v, state.heads, templates,
                                config, epoch, optimizers["v"], optimizers["t"]))
        if optimizers["v"] is not None:
            stats["train_images_per_s"] = round(n / (time.perf_counter() - train_start), 1)
            state.count_v_pass(stats["agreed_trained"] / n)
        if isinstance(images, DecodedImages) and epoch == first_epoch:
            stats["decode_images_per_s"] = round(images.decode_images_per_s, 1)
        # 4. refresh T's text embeddings; re-evaluate V with its updated tower
        if optimizers["t"] is not None:
            state.heads.t_classifier, state.heads.t_full = text_heads(model, classnames, templates)
        if optimizers["v"] is not None:
            f_v = evaluate_v(model, images, frozen, config, state)
        stats["seconds"] = round(time.perf_counter() - start, 3)
        _check_finite(stats, params_v + params_t, epoch, config)
        state.finish_epoch(stats)
        if on_epoch_end is not None:
            on_epoch_end(state, optimizers)
    return state, f_v


def fusion_confidence(config: ReclipConfig, f_frozen: torch.Tensor, heads: Heads, propagate: Transducer,
                      posterior: torch.Tensor | None) -> float | None:
    """The mean confidence the calibrated head fusion fits each head to: label propagation's on
    the frozen model (the N x C ``posterior``; without it, ``propagate`` on the frozen N x D
    features with the frozen model's text embeddings as class nodes); None when the run's
    prediction needs none (the paper's average, or one branch)."""
    if config.mode != "reclip" or config.head_fusion != "calibrated":
        return None
    if posterior is None:
        posterior = propagate(f_frozen, heads.t_original).probs
    return confidence_target(posterior)


def prediction_logits(config: ReclipConfig, f_frozen: torch.Tensor, f_v: torch.Tensor, heads: Heads,
                      confidence: float | None) -> torch.Tensor:
    """N x C prediction logits of the run's head (``heads.fuse`` with ``config.head_fusion`` at
    ``confidence``) from the frozen N x D features (T's) and V's N x D features."""
    logits_t, logits_v = head_logits(f_frozen, f_v, heads.t_classifier, heads.v_classifier)
    return fuse(logits_t, logits_v, config.mode, config.head_fusion, confidence)[0]


def prepare_v(model: DualEncoder, dataset: ImageDataset, frozen: Features, config: ReclipConfig,
              state: RunState) -> tuple[Dataset, torch.Tensor]:
    """(what V reads its pixels from, V's N x D features) at the start of ``adapt``: V's tower
    gets its blended BatchNorm statistics on a fresh run (``v_bn_blend`` > 0; a resumed run has
    them from its checkpoint); its features are the frozen ones until its tower changes (a
    resumed or blended one is re-encoded)."""
    images = training_images(dataset, frozen, config)
    if config.uses_v and config.v_bn_blend > 0 and state.epoch == 0:
        blend_v_statistics(model, images, frozen, config, state)
    changed = state.epoch > 0 or config.v_bn_blend > 0
    f_v = evaluate_v(model, images, frozen, config, state) if config.adapts_v_tower and changed else frozen.features
    return images, f_v


def training_images(dataset: ImageDataset, frozen: Features, config: ReclipConfig) -> Dataset:
    """What V reads its pixels from: ``dataset``, or when V trains, each image of this rank's
    shard decoded once (V reads the same pixels every pass)."""
    if config.adapts_v_tower and split_transform(dataset.transform) is not None:
        return DecodedImages(dataset, distributed.shard(frozen.indices.tolist()), config.batch_size,
                             _workers(config))
    return dataset


def blend_v_statistics(model: DualEncoder, images: Dataset, frozen: Features, config: ReclipConfig,
                       state: RunState) -> None:
    """Give V's image tower BatchNorm running statistics blended between the source's (the
    model's) and the target's, estimated in one pass over the target ``images`` (averaged over
    ranks), with the target's share ``config.v_bn_blend`` (``weights.blend_statistics``). The
    frozen features were computed before and keep the source statistics."""
    stats = model.named_image_norm_statistics()
    source = snapshot(stats)
    state.passes_forward += 1.0
    with estimating_statistics(model.image_modules()), torch.no_grad(), autocast(model.device):
        encode_dataset(model.encode_image, model.device, images, frozen.indices.tolist(),
                       batch_size=config.batch_size, workers=_workers(config), desc="V's BatchNorm statistics")
    target = {k: distributed.sum_tensors(v.detach().float().cpu()) / distributed.world() for k, v in stats.items()}
    load_into(stats, blend_statistics(source, target, config.v_bn_blend), "V's BatchNorm statistics")


def evaluate_v(model: DualEncoder, images: Dataset, frozen: Features, config: ReclipConfig,
               state: RunState) -> torch.Tensor:
    """N x D features of V's current image tower (sharded over ranks, gathered); counts the pass."""
    state.passes_forward += 1.0
    with autocast(model.device):
        return encode_dataset(model.encode_image, model.device, images, frozen.indices.tolist(),
                              batch_size=config.batch_size, workers=_workers(config), desc="evaluate V").features


def epoch_signals(config: ReclipConfig, frozen: Features, f_v: torch.Tensor, h: Heads, propagate: Transducer,
                  posterior: torch.Tensor | None, epoch: int,
                  confidence: float | None = None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(record, T's pseudo labels, V's pseudo labels) of ``epoch`` before its training pass.

    The record holds the heads' agreement, the branches' accuracies (when labels exist), the
    safeguard's estimated gain (with ``posterior``), the pseudo-label agreement and accuracies;
    the prediction is the run's fused head (``prediction_logits`` at ``confidence``). A single
    branch trains on its own pseudo labels (they then always "agree")."""
    labels = frozen.labels
    known = labels >= 0
    logits = prediction_logits(config, frozen.features, f_v, h, confidence)
    stats: dict = {"epoch": epoch,
                   "head_agreement": head_agreement(frozen.features, f_v, h.t_classifier, h.v_classifier)}
    if bool(known.any()):
        stats.update(branch_accuracies(frozen.features, f_v, h, labels, logits))
    labels_t, labels_v, graphs = branch_pseudo_labels(config, frozen.features, f_v, h, propagate)
    if graphs:
        stats["knn_backend"] = graphs
    if posterior is not None:  # the safeguard's second signal, as it stands before this pass
        stats["estimated_gain"] = estimated_gain(posterior, logits.argmax(dim=-1),
                                                 zero_shot_predictions(frozen.features, h))
    pseudo_t = labels_t if labels_t is not None else labels_v
    pseudo_v = labels_v if labels_v is not None else labels_t
    stats["agreement"] = (pseudo_t == pseudo_v).float().mean().item()
    if bool(known.any()):
        for branch, own, pseudo in (("t", labels_t, pseudo_t), ("v", labels_v, pseudo_v)):
            if own is not None:
                stats[f"pseudo_label_acc_{branch}"] = (pseudo == labels)[known].float().mean().item()
    return stats, pseudo_t, pseudo_v


def branch_pseudo_labels(config: ReclipConfig, f_frozen: torch.Tensor, f_v: torch.Tensor, heads: Heads,
                         propagate: Transducer) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, str]]:
    """(T's, V's) pseudo labels (N,) for this epoch, None for a branch that takes no part, and
    the k-NN backend that built each branch's graph ({"t": ..., "v": ...}, as recorded by the
    transducer; empty without propagation).

    ``pseudo_labels="propagated"``: label propagation, T on the frozen features (N x D) with
    its full-template text embeddings as class nodes, V on its own features with its
    classifier (``v_graph="centroids"``) or the original text embeddings as class nodes;
    V's classifier then becomes ``v_classifier`` of its pseudo labels (``propagated_labels``).
    ``"zero-shot"`` (an ablation): each branch's own current prediction, no propagation, V's
    classifier unchanged.
    """
    if config.pseudo_labels == "zero-shot":
        t = (f_frozen @ heads.t_classifier.T).argmax(-1) if config.trains_t else None
        v = (f_v @ heads.v_classifier.T).argmax(-1) if config.uses_v else None
        return t, v, {}
    lp_t = propagate(f_frozen, heads.t_full) if config.trains_t else None
    v_nodes = heads.v_classifier if config.v_graph == "centroids" else heads.t_original
    lp_v = propagate(f_v, v_nodes) if config.uses_v else None
    labels_t = propagated_labels(lp_t, config) if lp_t is not None else None
    labels_v = propagated_labels(lp_v, config) if lp_v is not None else None
    if lp_v is not None:
        heads.v_classifier = v_classifier(config, lp_v, v_nodes, f_v, labels_v, labels_t)
    graphs = {branch: lp.info["knn_backend"] for branch, lp in (("t", lp_t), ("v", lp_v))
              if lp is not None and "knn_backend" in lp.info}
    return labels_t, labels_v, graphs


def v_classifier(config: ReclipConfig, lp_v: Transduction, nodes: torch.Tensor, f_v: torch.Tensor,
                 labels_v: torch.Tensor, labels_t: torch.Tensor | None) -> torch.Tensor:
    """V's new C x D classifier from its propagation ``lp_v`` (class ``nodes`` C x D, V's N x D
    features ``f_v``, its (N,) pseudo labels ``labels_v``, T's ``labels_t`` or None without T):
    ``v_head="centroids"``, the paper's: the centroids of V's pseudo labels (label propagation's, or
    of the balanced labels with ``class_balance``); ``"linear"``: ``heads.linear_head`` trained on V's
    features and pseudo labels where both branches' labels agree (``agreement_mask``;
    ``v_head_targets="agreed"``) or on all V's features with ``lp_v``'s N x C probabilities as soft
    targets (``"posterior"``); ``"blend"``:
    the two blended by ``heads.blend_head`` at the mean confidence of ``lp_v``'s probabilities."""
    centroids = lp_v.centroids if config.class_balance == "off" else class_centroids(nodes, f_v, labels_v)
    centroids = centroids.float().cpu()
    if config.v_head == "centroids":
        return centroids
    if config.v_head_targets == "posterior":
        linear = linear_head(f_v, lp_v.probs, len(nodes))
    else:
        agree = agreement_mask(labels_t if labels_t is not None else labels_v, labels_v, config.agreement_filter)
        linear = linear_head(f_v[agree], labels_v[agree], len(nodes))
    if config.v_head == "linear":
        return linear
    return blend_head(f_v, centroids, linear, confidence_target(lp_v.probs))


def propagated_labels(lp: Transduction, config: ReclipConfig) -> torch.Tensor:
    """(N,) pseudo labels of a propagation: its labels (``class_balance="off"``, the paper's), or
    the classes of its N x C probabilities moved to the class proportions estimated from them
    (``"estimated"``, ``priors.balanced_labels``)."""
    return lp.labels if config.class_balance == "off" else balanced_labels(lp.probs)


def zero_shot_predictions(f_frozen: torch.Tensor, heads: Heads) -> torch.Tensor:
    """(N,) zero-shot classes: the frozen N x D features against the frozen model's full-template
    text embeddings."""
    return (f_frozen.float() @ heads.t_original.float().T).argmax(dim=-1)


def _workers(config: ReclipConfig) -> int:
    return default_workers() if config.workers is None else config.workers


def train_pass(model: DualEncoder, images: Dataset, classnames: list[list[str]], frozen: Features,
               pseudo_t: torch.Tensor, pseudo_v: torch.Tensor, heads: Heads, templates: list[str], config: ReclipConfig, epoch: int,
               opt_v: torch.optim.Optimizer | None, opt_t: torch.optim.Optimizer | None) -> dict[str, float]:
    """One shuffled pass; each batch trains each branch on the samples whose pseudo labels agree.

    ``images`` serves items ``(image, index, label)`` by dataset index. The shuffle order
    depends only on (seed, epoch), so a resumed run replays it exactly. Under torchrun, row j
    of ``frozen`` belongs to rank j % W (as in evaluation, so each rank decodes only its own
    images); each rank runs V on its rows of every batch and the gradients are summed, which
    gives the single-process update. T needs no images: every rank runs all of it.
    """
    device = model.device
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    batches = torch.randperm(len(frozen.indices), generator=generator).split(config.batch_size)  # rows of frozen
    agree = agreement_mask(pseudo_t, pseudo_v, config.agreement_filter)
    images_of, row_of = _v_batches(images, frozen, batches, config) if opt_v is not None else (None, None)
    # cross-entropy sums and agreed counts; V's are this rank's share until summed at the end
    sums = {"ce_t": 0.0, "agreed": 0, "seen": 0, "ce_v": torch.zeros(2, dtype=torch.float64)}
    bar = progress(batches, f"train epoch {epoch + 1}")
    for rows in bar:
        batch = next(images_of) if opt_v is not None else None  # every rank advances in lockstep
        count = int(agree[rows].sum())
        sums["seen"] += len(rows)
        if count == 0:
            continue
        sums["agreed"] += count
        with autocast(device):
            if opt_t is not None:
                sums["ce_t"] += t_step(model, classnames, templates, frozen.features[rows], pseudo_t[rows],
                                       agree[rows], opt_t)
            if opt_v is not None:
                pixels, indices, _, _ = batch
                # only agreed samples carry loss, and BatchNorm is frozen (eval mode), so the
                # others would add nothing to the gradient: skip their forward and backward
                keep = agree[row_of[indices]]
                mine = row_of[indices[keep]]
                # masked mean over the whole (all-rank) batch; "reference" also divides by its size
                scale = count * (len(rows) if config.v_loss == "reference" else 1)
                sums["ce_v"] += v_step(model, pixels[keep], pseudo_v[mine], heads.v_classifier, scale, opt_v)
        bar.set_postfix(agree=f"{sums['agreed'] / sums['seen']:.3f}",
                        loss_t=f"{sums['ce_t'] / sums['agreed']:.3f}",
                        loss_v=f"{sums['ce_v'][0] / max(sums['ce_v'][1], 1):.3f}")
    ce_v, agreed_v = distributed.sum_tensors(sums["ce_v"]).tolist()
    return {"agreed_trained": sums["agreed"], **({"loss_t": sums["ce_t"] / max(sums["agreed"], 1)} if opt_t else {}),
            **({"loss_v": ce_v / max(agreed_v, 1)} if opt_v else {})}


def _v_batches(images: Dataset, frozen: Features, batches: tuple[torch.Tensor, ...],
               config: ReclipConfig) -> tuple[Iterator, torch.Tensor]:
    """(this rank's images of each batch of rows of ``frozen``, the row of each dataset index or -1)."""
    shares = [frozen.indices[rows[rows % distributed.world() == distributed.rank()]].tolist() for rows in batches]
    row_of = torch.full((len(images),), -1, dtype=torch.long)
    row_of[frozen.indices] = torch.arange(len(frozen.indices))
    return iter(DataLoader(images, batch_sampler=shares, num_workers=_workers(config), collate_fn=collate)), row_of


def agreement_mask(pseudo_t: torch.Tensor, pseudo_v: torch.Tensor, agreement_filter: bool) -> torch.Tensor:
    """(N,) bool: the samples both branches train on, those whose (N,) pseudo labels agree (all
    of them without the agreement filter)."""
    return pseudo_t == pseudo_v if agreement_filter else torch.ones(len(pseudo_t), dtype=torch.bool)


def t_step(model: DualEncoder, classnames: list[list[str]], templates: list[str], features: torch.Tensor,
           pseudo: torch.Tensor, agree: torch.Tensor, opt_t: torch.optim.Optimizer) -> float:
    """One step of T: the B x D frozen image ``features`` against the first-template prompts
    (encoded once per step), cross-entropy on the (B,) ``pseudo`` labels masked by ``agree``,
    averaged over the agreed samples. Returns the masked cross-entropy sum."""
    device = model.device
    t_short = class_embeddings(model, classnames, templates[:1])
    with full_precision(device):
        logits_t = LOGIT_SCALE * features.to(device) @ t_short.float().T
    ce_t = masked_ce_sum(logits_t, pseudo.to(device), agree.float().to(device))
    opt_t.zero_grad(set_to_none=True)
    (ce_t / int(agree.sum())).backward()
    opt_t.step()
    return ce_t.item()


def v_step(model: DualEncoder, pixels: torch.Tensor, pseudo: torch.Tensor, v_classifier: torch.Tensor,
           scale: float, opt_v: torch.optim.Optimizer) -> torch.Tensor:
    """One step of V on this rank's agreed images: their features against V's centroid
    classifier (fixed during the pass), cross-entropy sum on the ``pseudo`` labels divided by
    ``scale``; gradients summed over ranks. Returns float64 (cross-entropy sum, images)."""
    device = model.device
    opt_v.zero_grad(set_to_none=True)
    out = torch.zeros(2, dtype=torch.float64)
    if len(pseudo):
        f = model.encode_image(pixels.to(device, non_blocking=True))
        with full_precision(device):
            logits_v = LOGIT_SCALE * f.float() @ v_classifier.to(device).T
        ce_v = cross_entropy(logits_v, pseudo.to(device), reduction="sum")
        (ce_v / scale).backward()
        out += torch.tensor([ce_v.item(), float(len(pseudo))], dtype=torch.float64)
    distributed.sum_gradients([p for group in opt_v.param_groups for p in group["params"]])
    opt_v.step()
    return out


def branch_accuracies(f_frozen: torch.Tensor, f_v: torch.Tensor, heads: Heads, labels: torch.Tensor,
                      logits: torch.Tensor) -> dict[str, float]:
    """Top-1 of the N x C ``logits`` and of each branch's own head, over the known labels (N,)."""
    known = labels >= 0
    acc = lambda lg: (lg.argmax(dim=-1) == labels)[known].float().mean().item()  # noqa: E731
    return {"top1": acc(logits),
            "top1_t": acc(f_frozen @ heads.t_classifier.T),
            "top1_v": acc(f_v @ heads.v_classifier.T)}


def _check_finite(stats: dict, params: list[nn.Parameter], epoch: int, config: ReclipConfig) -> None:
    losses = [stats[k] for k in ("loss_t", "loss_v") if k in stats]
    if all(torch.isfinite(torch.tensor(losses)).tolist()) and all(bool(p.isfinite().all()) for p in params):
        return
    raise ReclipError(f"training diverged in epoch {epoch + 1} (non-finite loss or weights; lr_v={config.lr_v:g}, "
                      f"lr_t={config.lr_t:g}, weight_decay={config.weight_decay:g}): lower the learning rates; "
                      "the last good checkpoint is kept")
