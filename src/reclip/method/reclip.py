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
from typing import Callable

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
from ..metrics import scores_to_probabilities
from ..precision import autocast, full_precision
from ..progress import progress
from .config import ReclipConfig
from .propagation import label_propagation
from .safeguard import estimated_gain, head_agreement
from .zeroshot import LOGIT_SCALE, class_embeddings, ensemble_classifiers

log = logging.getLogger(__name__)

@dataclass
class Heads:
    """Everything the combined classifier needs besides the tower weights.

    ``v_classifier`` C x D (V's centroids), ``t_classifier`` C x D (first-template text
    embeddings of the current text tower), ``t_full`` C x D (full-template embeddings:
    T's projection and class nodes), ``t_original`` C x D (the frozen model's full-template
    embeddings: V's projection and class nodes for the whole run).
    """

    v_classifier: torch.Tensor
    t_classifier: torch.Tensor
    t_full: torch.Tensor
    t_original: torch.Tensor


@dataclass
class RunState:
    """What a checkpoint must hold to resume a run exactly."""

    epoch: int                                   # epochs completed
    heads: Heads
    history: list[dict] = field(default_factory=list)
    passes_forward: float = 0.0                  # image-tower forward passes per image so far
    passes_backward: float = 0.0


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


def make_optimizer(params: list[nn.Parameter], lr: float, config: ReclipConfig) -> torch.optim.SGD | None:
    if not params:
        return None
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


def combined_logits(f_frozen: torch.Tensor, f_v: torch.Tensor, t_classifier: torch.Tensor,
                    v_classifier: torch.Tensor, mode: str) -> torch.Tensor:
    """N x C float32 prediction logits: 0.5 * (logits_T + logits_V) for ReCLIP, one branch otherwise.

    ``f_frozen`` N x D frozen-tower features (T's), ``f_v`` N x D V's, classifiers C x D.
    """
    logits_t = LOGIT_SCALE * f_frozen.float() @ t_classifier.float().T
    logits_v = LOGIT_SCALE * f_v.float() @ v_classifier.float().T
    return {"reclip": 0.5 * (logits_t + logits_v), "v-only": logits_v, "t-only": logits_t}[mode]


def text_heads(model: DualEncoder, classnames: list[list[str]], templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-template C x D, full-template C x D) float32 embeddings of the current text tower, on CPU."""
    with torch.inference_mode():
        full, short = ensemble_classifiers(model, classnames, templates)
    return short.float().cpu(), full.float().cpu()


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
          ) -> tuple[RunState, torch.Tensor, torch.Tensor]:
    """Run ReCLIP self-training on the readable images of ``dataset``.

    ``frozen`` holds the frozen image tower's features (N x D) in dataset order; T trains and
    classifies with ``templates[0]``. Pass a ``state`` (and ``optimizer_state``) from a
    checkpoint to resume after ``state.epoch`` epochs. ``on_epoch_end(state, optimizers)`` is
    called on every rank after every epoch (checkpoints, progress). With ``posterior`` (N x C,
    :func:`frozen_posterior`) every epoch records the safeguard's ``estimated_gain`` of the
    current prediction over zero-shot. Raises ``ReclipError``
    when training produces a non-finite loss or parameter (before that epoch's callback, so
    the last checkpoint stays the last good one). Returns the final state, the final N x D
    features of V and the final N x C prediction logits.
    """
    classnames = dataset.classnames
    n = len(frozen.indices)
    epochs = config.num_epochs(n)
    device = model.device
    params_v, params_t = configure_model(model, config)
    opt_v = make_optimizer(params_v, config.lr_v, config)
    opt_t = make_optimizer(params_t, config.lr_t, config)
    optimizers = {"v": opt_v, "t": opt_t}
    for name, opt in optimizers.items():
        if opt is not None and optimizer_state and name in optimizer_state:
            opt.load_state_dict(optimizer_state[name])
    if state is None:
        state = initial_state(model, classnames, templates)
    labels = frozen.labels
    has_labels = bool((labels >= 0).any())

    # V reads the same pixels every pass: decode each image of this rank's shard once
    images = dataset
    if config.trains_v and split_transform(dataset.transform) is not None:
        images = DecodedImages(dataset, distributed.shard(frozen.indices.tolist()), config.batch_size,
                               _workers(config))

    def evaluate_v() -> torch.Tensor:
        """N x D features of V's current image tower (sharded over ranks, gathered)."""
        state.passes_forward += 1.0
        with autocast(device):
            return encode_dataset(model.encode_image, device, images, frozen.indices.tolist(),
                                  batch_size=config.batch_size, workers=_workers(config), desc="evaluate V").features

    # V's features: the frozen ones until V has trained (a resumed run re-encodes them)
    f_v = evaluate_v() if config.trains_v and state.epoch > 0 else frozen.features
    first_epoch = state.epoch
    for epoch in range(first_epoch, epochs):
        start = time.perf_counter()
        h = state.heads
        # 1. evaluate both branches (f_v was computed after the previous training pass)
        logits = combined_logits(frozen.features, f_v, h.t_classifier, h.v_classifier, config.mode)
        stats: dict = {"epoch": epoch}
        stats["head_agreement"] = head_agreement(frozen.features, f_v, h.t_classifier, h.v_classifier)
        if has_labels:
            stats.update(branch_accuracies(frozen.features, f_v, h, labels, logits))

        # 2. pseudo labels of each branch (V's classifier becomes its centroids)
        labels_t, labels_v = branch_pseudo_labels(config, frozen.features, f_v, h, len(classnames), device)
        if posterior is not None:  # the safeguard's second signal, as it stands before this pass
            stats["estimated_gain"] = estimated_gain(posterior, logits.argmax(dim=-1),
                                                     zero_shot_predictions(frozen.features, h))
        # a single branch trains on its own pseudo labels (they then always "agree")
        pseudo_t = labels_t if labels_t is not None else labels_v
        pseudo_v = labels_v if labels_v is not None else labels_t
        stats["agreement"] = (pseudo_t == pseudo_v).float().mean().item()
        if has_labels:
            known = labels >= 0
            if labels_t is not None:
                stats["pseudo_label_acc_t"] = (pseudo_t == labels)[known].float().mean().item()
            if labels_v is not None:
                stats["pseudo_label_acc_v"] = (pseudo_v == labels)[known].float().mean().item()

        # 3. one shuffled pass over the agreed samples (all samples without the agreement filter)
        train_start = time.perf_counter()
        stats.update(train_pass(model, images, classnames, frozen, pseudo_t, pseudo_v, h, templates, config, epoch,
                                opt_v, opt_t))
        if opt_v is not None:
            stats["train_images_per_s"] = round(n / (time.perf_counter() - train_start), 1)
            # V ran forward and backward on the agreed samples only
            state.passes_forward += stats["agreed_trained"] / n
            state.passes_backward += stats["agreed_trained"] / n
        if isinstance(images, DecodedImages) and epoch == first_epoch:
            stats["decode_images_per_s"] = round(images.decode_images_per_s, 1)

        # 4. refresh T's text embeddings; re-evaluate V with its updated tower
        if opt_t is not None:
            h.t_classifier, h.t_full = text_heads(model, classnames, templates)
        if opt_v is not None:
            f_v = evaluate_v()
        stats["seconds"] = round(time.perf_counter() - start, 3)
        _check_finite(stats, params_v + params_t, epoch, config)
        state.history.append(stats)
        state.epoch = epoch + 1
        log.info("epoch %d: %s", epoch, stats)
        if on_epoch_end is not None:
            on_epoch_end(state, optimizers)

    h = state.heads
    return state, f_v, combined_logits(frozen.features, f_v, h.t_classifier, h.v_classifier, config.mode)


def branch_pseudo_labels(config: ReclipConfig, f_frozen: torch.Tensor, f_v: torch.Tensor, heads: Heads,
                         num_classes: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(T's, V's) pseudo labels (N,) for this epoch; None for a branch that takes no part.

    ``pseudo_labels="propagated"``: label propagation, T on the frozen features (N x D) with
    its full-template text embeddings as class nodes, V on its own features with its
    classifier (``v_graph="centroids"``) or the original text embeddings as class nodes;
    V's classifier then becomes V's centroids. ``"zero-shot"`` (an ablation): each branch's
    own current prediction, no propagation, V's classifier unchanged.
    """
    if config.pseudo_labels == "zero-shot":
        t = (f_frozen @ heads.t_classifier.T).argmax(-1) if config.trains_t else None
        v = (f_v @ heads.v_classifier.T).argmax(-1) if config.uses_v else None
        return t, v
    lp_kw = _propagation_settings(config, num_classes, device)
    lp_t = label_propagation(f_frozen, heads.t_full, **lp_kw) if config.trains_t else None
    v_nodes = heads.v_classifier if config.v_graph == "centroids" else heads.t_original
    lp_v = label_propagation(f_v, v_nodes, **lp_kw) if config.uses_v else None
    if lp_v is not None:
        heads.v_classifier = lp_v.centroids.float().cpu()
    return (lp_t.labels if lp_t is not None else None), (lp_v.labels if lp_v is not None else None)


def frozen_posterior(config: ReclipConfig, f_frozen: torch.Tensor, classifier: torch.Tensor,
                     device: torch.device) -> torch.Tensor:
    """N x C probabilities of label propagation on the frozen model: the frozen N x D features
    with its C x D zero-shot ``classifier`` (full-template text embeddings) as class nodes,
    scores normalised as the transductive predictions are (they are those predictions).
    Training cannot bend them, so the safeguard's gain estimate and the calibration's target
    read them (docs/method.md, "Safeguard and calibration")."""
    lp = label_propagation(f_frozen, classifier, **_propagation_settings(config, len(classifier), device))
    return scores_to_probabilities(lp.scores)


def zero_shot_predictions(f_frozen: torch.Tensor, heads: Heads) -> torch.Tensor:
    """(N,) zero-shot classes: the frozen N x D features against the frozen model's full-template
    text embeddings."""
    return (f_frozen.float() @ heads.t_original.float().T).argmax(dim=-1)


def _propagation_settings(config: ReclipConfig, num_classes: int, device: torch.device) -> dict:
    return dict(k=config.k, alpha=config.alpha, cut_dim=config.projection_rank(num_classes), project=config.project,
                knn=config.knn, knn_backend=config.knn_backend, image_edges=config.image_edges, device=device)


def _workers(config: ReclipConfig) -> int:
    return default_workers() if config.workers is None else config.workers


def train_pass(model: DualEncoder, images: Dataset, classnames: list[list[str]], frozen: Features,
               pseudo_t: torch.Tensor,
               pseudo_v: torch.Tensor, heads: Heads, templates: list[str], config: ReclipConfig, epoch: int,
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
    agree = pseudo_t == pseudo_v if config.agreement_filter else torch.ones(len(pseudo_t), dtype=torch.bool)
    if opt_v is not None:
        shares = [frozen.indices[rows[rows % distributed.world() == distributed.rank()]].tolist() for rows in batches]
        images_of = iter(DataLoader(images, batch_sampler=shares, num_workers=_workers(config), collate_fn=collate))
    row_of = torch.full((len(images),), -1, dtype=torch.long)
    row_of[frozen.indices] = torch.arange(len(frozen.indices))
    params_v = [p for group in opt_v.param_groups for p in group["params"]] if opt_v is not None else []
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
                # T: frozen image features against first-template prompts, encoded once per step
                t_short = class_embeddings(model, classnames, templates[:1])
                with full_precision(device):
                    logits_t = LOGIT_SCALE * frozen.features[rows].to(device) @ t_short.float().T
                ce_t = masked_ce_sum(logits_t, pseudo_t[rows].to(device), agree[rows].float().to(device))
                opt_t.zero_grad(set_to_none=True)
                (ce_t / count).backward()
                opt_t.step()
                sums["ce_t"] += ce_t.item()
            if opt_v is not None:
                # V: its own image features against its centroid classifier (fixed during the pass)
                pixels, indices, _, _ = batch
                # only agreed samples carry loss, and BatchNorm is frozen (eval mode), so the
                # others would add nothing to the gradient: skip their forward and backward
                keep = agree[row_of[indices]]
                mine = row_of[indices[keep]]
                opt_v.zero_grad(set_to_none=True)
                if len(mine):
                    f = model.encode_image(pixels[keep].to(device, non_blocking=True))
                    with full_precision(device):
                        logits_v = LOGIT_SCALE * f.float() @ heads.v_classifier.to(device).T
                    ce_v = cross_entropy(logits_v, pseudo_v[mine].to(device), reduction="sum")
                    # masked mean over the whole (all-rank) batch; "reference" also divides by its size
                    scale = count * (len(rows) if config.v_loss == "reference" else 1)
                    (ce_v / scale).backward()
                    sums["ce_v"] += torch.tensor([ce_v.item(), float(len(mine))], dtype=torch.float64)
                distributed.sum_gradients(params_v)
                opt_v.step()
        bar.set_postfix(agree=f"{sums['agreed'] / sums['seen']:.3f}",
                        loss_t=f"{sums['ce_t'] / sums['agreed']:.3f}",
                        loss_v=f"{sums['ce_v'][0] / max(sums['ce_v'][1], 1):.3f}")
    ce_v, agreed_v = distributed.sum_tensors(sums["ce_v"]).tolist()
    out: dict[str, float] = {"agreed_trained": sums["agreed"]}
    if opt_t is not None:
        out["loss_t"] = sums["ce_t"] / max(sums["agreed"], 1)
    if opt_v is not None:
        out["loss_v"] = ce_v / max(agreed_v, 1)
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
