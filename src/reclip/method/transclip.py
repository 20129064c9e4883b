"""TransCLIP-style training-free transduction (Zanella, Gérin, Ben Ayed, NeurIPS 2024).

Written from the paper's equations (zero-shot setting: every image is an unlabelled
query). With L2-normalised image features f_i (N x D), zero-shot probabilities y_i
(N x C) and soft assignments z_i in the simplex, the objective is

    L(z, mu, Sigma) = - sum_i z_i . log p_i                    (Gaussian mixture)
                      - sum_i sum_j w_ij z_i . z_j              (Laplacian, k-NN graph)
                      + sum_i (z_i . log z_i - lambda z_i . log y_i)   (KL to the text)

where ``log p_ik = -1/2 (f_i - mu_k)^T Sigma^-1 (f_i - mu_k)`` (up to terms equal for all
classes) with C class means ``mu_k`` and one diagonal covariance ``Sigma`` shared by all
classes, and ``w_ij = f_i . f_j`` for the k nearest neighbours j of i (0 elsewhere).
Block majorize-minimize runs, per outer iteration,

1. ``z_steps`` assignment updates, each decoupled over images (the Laplacian term is
   linearised at the current z; the update uses ``sum_j w_ij z_j``, the z-update as we read
   the paper, where the exact linearisation of the term above is ``sum_j (w_ij + w_ji) z_j``:
   the two differ by a factor 2 where ``w`` is symmetric and slightly more where the k-NN
   ``w`` is not):
   ``z_i <- softmax(lambda log y_i + log p_i + sum_j w_ij z_j)``;
2. the means ``mu_k = sum_i z_ik f_i / sum_i z_ik``;
3. the shared diagonal ``Sigma_dd = 1/N sum_i sum_k z_ik (f_id - mu_kd)^2``.

Start: z = y; each mean is the average of the ``init_confident`` images the zero-shot
classifier is most confident about for that class; Sigma = I / D. The defaults (k = 3
neighbours, lambda = 1, 10 outer iterations of 5 z-steps, 8 images per initial mean) are
our reading of the paper's zero-shot settings: its full text could not be opened offline to
check them (a third-party wrapper of the authors' code lists the same k, lambda and outer
iteration count; the 5 z-steps and the 8-image start are unverified).

Memory is O(N (C + D) + N k): the Mahalanobis terms are one N x D by D x C product, the
graph is a sparse N x N matrix with N k entries (built by :func:`reclip.method.knn.knn_search`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from reclip.errors import ReclipError
from reclip.method.knn import KNN_METHODS, knn_search
from reclip.method.zeroshot import zero_shot_logits

logger = logging.getLogger(__name__)

#: Zero-shot probabilities are clamped to at least this before the log (a zero would veto a class).
PROB_FLOOR = 1e-12


@dataclass(frozen=True)
class TransclipResult:
    """Output of :func:`transclip`; all tensors are on the CPU.

    Attributes:
        probs: (N x C) final assignments z (rows sum to 1), in the input's float dtype.
        labels: (N,) int64 ``argmax_c probs[i, c]``.
        means: (C x D) class means mu.
        variance: (D,) diagonal of the shared covariance Sigma.
        k: neighbours per image actually used (k clipped to N - 1).
        timings: seconds per stage: ``knn`` (graph), ``solve`` (BMM iterations), ``total``.
    """

    probs: torch.Tensor
    labels: torch.Tensor
    means: torch.Tensor
    variance: torch.Tensor
    k: int
    timings: dict[str, float]


def zero_shot_probs(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """N x D image features, C x D text classifier -> N x C softmax of the zero-shot logits (scale 100)."""
    return torch.softmax(zero_shot_logits(image_features, classifier), dim=-1)


def transclip(
    image_features: torch.Tensor,
    zero_shot: torch.Tensor | None = None,
    *,
    classifier: torch.Tensor | None = None,
    k: int = 3,
    lambda_: float = 1.0,
    iterations: int = 10,
    z_steps: int = 5,
    init_confident: int = 8,
    knn: str = "exact",
    device: str | torch.device | None = None,
) -> TransclipResult:
    """Transductive class probabilities of N images from their features and zero-shot predictions.

    Args:
        image_features: (N x D) image features (L2-normalised here; zero rows stay zero).
        zero_shot: (N x C) zero-shot class probabilities (rows summing to 1); or None and
            ``classifier`` given.
        classifier: (C x D) text classifier; the zero-shot probabilities are then
            ``softmax(100 f t^T)`` (see :func:`zero_shot_probs`).
        k: neighbours per image in the affinity graph; clipped to N - 1.
        lambda_: weight of the text term (``lambda`` of the KL penalty), > 0.
        iterations: outer BMM iterations (z-steps, then mu, then Sigma).
        z_steps: assignment updates per outer iteration.
        init_confident: images per class averaged for the initial means.
        knn: ``"exact"`` or ``"approx"`` neighbour search (see :mod:`reclip.method.knn`).
        device: where the iterations run; None: the device of ``image_features``.

    Returns:
        :class:`TransclipResult`. float64 inputs are processed in float64, others in float32.

    Raises:
        ReclipError: on mismatched shapes, NaN/inf inputs, fewer than 2 images or classes,
            or invalid options.
    """
    start = time.perf_counter()
    _check_options(k=k, lambda_=lambda_, iterations=iterations, z_steps=z_steps,
                   init_confident=init_confident, knn=knn)
    device = torch.device(device) if device is not None else image_features.device
    dtype = torch.float64 if image_features.dtype == torch.float64 else torch.float32
    feats = nnf.normalize(_finite(image_features, "image_features").to(device, dtype), dim=1)
    probs = _zero_shot(feats, zero_shot, classifier).to(device, dtype)
    num_images = feats.shape[0]
    if num_images < 2:
        raise ReclipError(f"transclip needs at least 2 images, got {num_images}")
    k = min(k, num_images - 1)

    neighbours = knn_search(feats.float(), k, knn)
    affinity = _sparse_affinity(feats, neighbours.indices.to(device))
    graph_done = time.perf_counter()

    log_prior = lambda_ * probs.clamp(min=PROB_FLOOR).log()
    z = probs
    means = _confident_means(feats, probs, init_confident)
    variance = torch.full((feats.shape[1],), 1.0 / feats.shape[1], device=device, dtype=dtype)
    for _ in range(iterations):
        log_likelihood = gaussian_log_likelihood(feats, means, variance)
        for _ in range(z_steps):
            z = torch.softmax(log_prior + log_likelihood + torch.sparse.mm(affinity, z), dim=1)
        means = class_means(feats, z)
        variance = shared_variance(feats, z, means)
    done = time.perf_counter()

    timings = {"knn": graph_done - start, "solve": done - graph_done, "total": done - start}
    logger.info("transclip N=%d C=%d k=%d: graph %.2fs, %d iterations %.2fs",
                num_images, probs.shape[1], k, timings["knn"], iterations, timings["solve"])
    return TransclipResult(probs=z.cpu(), labels=z.argmax(dim=1).cpu(), means=means.cpu(),
                           variance=variance.cpu(), k=k, timings=timings)


def gaussian_log_likelihood(feats: torch.Tensor, means: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """(N x C) ``-1/2 sum_d (f_id - mu_kd)^2 / var_d``, expanded so no N x C x D tensor is formed."""
    precision = 1.0 / variance
    quadratic = (feats.square() @ precision)[:, None] - 2.0 * feats @ (means * precision).T
    return -0.5 * (quadratic + (means.square() @ precision)[None, :])


def class_means(feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(C x D) ``mu_k = sum_i z_ik f_i / sum_i z_ik``."""
    return (z.T @ feats) / z.sum(dim=0).clamp(min=torch.finfo(z.dtype).tiny)[:, None]


def shared_variance(feats: torch.Tensor, z: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(D,) ``1/N sum_i sum_k z_ik (f_id - mu_kd)^2``, using ``sum_k z_ik = 1``.

    Expanded as ``sum_i f_i^2 - 2 sum_k mu_k * (sum_i z_ik f_i) + sum_k (sum_i z_ik) mu_k^2``;
    clamped to a tiny positive value so the precision stays finite.
    """
    weighted = z.T @ feats  # C x D
    total = feats.square().sum(dim=0) - 2.0 * (means * weighted).sum(dim=0) + z.sum(dim=0) @ means.square()
    return (total / feats.shape[0]).clamp(min=torch.finfo(feats.dtype).eps)


def _confident_means(feats: torch.Tensor, probs: torch.Tensor, count: int) -> torch.Tensor:
    """(C x D) mean of the ``count`` images with the highest zero-shot probability of each class."""
    top = probs.topk(min(count, feats.shape[0]), dim=0).indices  # count x C
    return feats[top].mean(dim=0)


def _sparse_affinity(feats: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Sparse (N x N) ``W[i, j] = f_i . f_j`` for the k neighbours j of each i (N x k ``indices``,
    missing ones -1 and skipped), the products recomputed in the features' (N x D) precision
    whichever k-NN backend found the neighbours."""
    num_images = feats.shape[0]
    rows = torch.arange(num_images, device=feats.device)[:, None].expand_as(indices)
    keep = indices >= 0
    rows, cols = rows[keep], indices[keep]
    weights = (feats[rows] * feats[cols]).sum(dim=1)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (num_images, num_images),
                                   check_invariants=True).coalesce()


def _zero_shot(feats: torch.Tensor, zero_shot: torch.Tensor | None, classifier: torch.Tensor | None) -> torch.Tensor:
    """The (N x C) zero-shot probabilities, given directly or from a (C x D) classifier."""
    if (zero_shot is None) == (classifier is None):
        raise ReclipError("transclip needs exactly one of zero_shot (N x C probabilities) or classifier (C x D)")
    if classifier is not None:
        classes = _finite(classifier, "classifier")
        if classes.ndim != 2 or classes.shape[1] != feats.shape[1]:
            raise ReclipError(f"classifier must be C x D with D={feats.shape[1]} (the image features' D), "
                              f"got shape {tuple(classes.shape)}")
        probs = zero_shot_probs(feats, nnf.normalize(classes.to(feats.device, feats.dtype), dim=1))
    else:
        probs = _finite(zero_shot, "zero_shot")
        if probs.ndim != 2 or probs.shape[0] != feats.shape[0]:
            raise ReclipError(f"zero_shot must be N x C with N={feats.shape[0]} (one row per image), "
                              f"got shape {tuple(probs.shape)}")
        if bool((probs < 0).any()) or float((probs.double().sum(dim=1) - 1).abs().max()) > 1e-3:
            raise ReclipError("zero_shot rows must be probabilities (non-negative, summing to 1); "
                              "pass softmax(logits) or the classifier instead")
    if probs.shape[1] < 2:
        raise ReclipError(f"transclip needs at least 2 classes, got {probs.shape[1]}")
    return probs


def _finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ReclipError(f"{name} must be a 2-D torch tensor")
    if not bool(torch.isfinite(x).all()):
        raise ReclipError(f"{name} contains NaN or inf values; check the features")
    return x


def _check_options(*, k: int, lambda_: float, iterations: int, z_steps: int, init_confident: int, knn: str) -> None:
    if knn not in KNN_METHODS:
        raise ReclipError(f"knn must be one of {KNN_METHODS}, got {knn!r}")
    for name, value in (("k", k), ("iterations", iterations), ("z_steps", z_steps),
                        ("init_confident", init_confident)):
        if value < 1:
            raise ReclipError(f"{name} must be at least 1, got {value}")
    if not lambda_ > 0:
        raise ReclipError(f"lambda_ must be > 0, got {lambda_}")
