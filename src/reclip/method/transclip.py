"""TransCLIP (Zanella, Gérin, Ben Ayed, NeurIPS 2024), zero-shot setting, as published.

Written in our own code from the paper and the facts of the authors' released solver
(github MaxZanella/transduction-for-vlms, ``TransCLIP_solver/``, and their reply in that
repository's issue #1); docs/method.md gives the equation-by-equation correspondence.
Every image is an unlabelled query. With L2-normalised image features f_i (N x D) and
zero-shot probabilities ``y_i = softmax(100 f_i . t)`` (N x C; the authors build the text
classifier t from the first prompt template only), the objective is

    L(z, mu, Sigma) = - 1/T sum_i z_i . log p_i                 (Gaussian mixture)
                      - 1/(2k) sum_i sum_j w_ij z_i . z_j        (Laplacian, k-NN graph)
                      + sum_i (z_i . log z_i - lambda z_i . log y_i)   (KL to the text)

with ``log p_ik = -1/2 sum_d (f_id - mu_kd)^2 / Sigma_dd`` (one diagonal covariance shared by
all classes, no log-determinant), ``w_ij = f_i . f_j`` for the k nearest neighbours j of i
(self excluded, 0 elsewhere, not symmetrised) and T = ``entropy_weight`` = 50, the weight of
the entropy term that acts as a softmax temperature on the mixture term. Block
majorize-minimize, all images at once:

- z-step: ``z_i <- y_i^lambda * exp(1/T [log p_i + (T / (2k)) sum_j (w_ji + w_ij) z_j])``,
  normalised to sum to 1 (the Laplacian linearised at the current z: the neighbour term
  is symmetric even though w is not);
- means: ``mu_k = normalise(sum_i z_ik f_i / sum_i z_ik)`` (L2-normalised);
- covariance: ``Sigma_dd = 1/N sum_i sum_k z_ik (f_id - mu_kd)^2`` with the new means.

Start: z = y; ``mu_k`` = the L2-normalised sum of ``y_ik f_i`` over the ``init_confident``
(8) images most confident for class k; ``Sigma = I / D``. Order: for t = 0..iterations:
log p from the current (mu, Sigma), ``z_steps`` z-steps; stop after t = iterations,
otherwise update mu then Sigma. So ``iterations + 1`` z-blocks (11) and ``iterations``
(10) mean/variance updates. Defaults: k = 3, lambda = 1, 10 iterations of 5 z-steps, T = 50.

Memory is O(N (C + D) + N k): the Mahalanobis terms are one N x D by D x C product, the
graph is a sparse N x N matrix with 2 N k entries (built by :func:`reclip.method.knn.knn_search`),
the covariance is accumulated over chunks of images.
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
#: T: the entropy term's weight, a temperature on the mixture term, fixed across tasks by the authors.
ENTROPY_WEIGHT = 50.0
#: Images per chunk in :func:`shared_variance` are chosen so a chunk x C x D block stays below this.
VARIANCE_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class TransclipResult:
    """Output of :func:`transclip`; all tensors are on the CPU.

    Attributes:
        probs: (N x C) final assignments z (rows sum to 1), in the input's float dtype.
        labels: (N,) int64 ``argmax_c probs[i, c]``.
        means: (C x D) L2-normalised class means mu.
        variance: (D,) diagonal of the shared covariance Sigma.
        k: neighbours per image actually used (k clipped to N - 1).
        knn_backend: the k-NN search that built the graph (:class:`reclip.method.knn.Neighbours`).
        timings: seconds per stage: ``knn`` (graph), ``solve`` (BMM blocks), ``total``.
    """

    probs: torch.Tensor
    labels: torch.Tensor
    means: torch.Tensor
    variance: torch.Tensor
    k: int
    knn_backend: str
    timings: dict[str, float]


def zero_shot_probs(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """N x D image features, C x D text classifier -> N x C softmax of the zero-shot logits (scale 100)."""
    return torch.softmax(zero_shot_logits(image_features, classifier), dim=-1)


def transclip(image_features: torch.Tensor, zero_shot: torch.Tensor | None = None, *,
              classifier: torch.Tensor | None = None, k: int = 3, lambda_: float = 1.0, iterations: int = 10,
              z_steps: int = 5, init_confident: int = 8, entropy_weight: float = ENTROPY_WEIGHT, knn: str = "exact",
              device: str | torch.device | None = None) -> TransclipResult:
    """Transductive class probabilities of N images from their features and zero-shot predictions.

    Args:
        image_features: (N x D) image features (L2-normalised here; zero rows stay zero).
        zero_shot: (N x C) zero-shot class probabilities y (rows summing to 1); or None and
            ``classifier`` given.
        classifier: (C x D) text classifier; then ``y = softmax(100 f t^T)`` (see
            :func:`zero_shot_probs`). The published method uses the first template's classifier.
        k: neighbours per image in the affinity graph; clipped to N - 1.
        lambda_: exponent of y in the z-step (weight of the KL term to the text), > 0.
        iterations: mean/variance updates; the z-blocks are one more.
        z_steps: z-steps per block.
        init_confident: most confident images per class summed for the initial means.
        entropy_weight: T, the temperature dividing the mixture term in the z-step, > 0.
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
                   init_confident=init_confident, entropy_weight=entropy_weight, knn=knn)
    feats, probs = _inputs(image_features, zero_shot, classifier, device)
    num_images, k = feats.shape[0], min(k, feats.shape[0] - 1)

    neighbours = knn_search(feats.float(), k, knn)
    affinity = _sparse_affinity(feats, neighbours.indices.to(device))
    symmetric = (affinity + affinity.t()).coalesce() * (1.0 / (2 * k))  # (W + W^T) / (2k)
    graph_done = time.perf_counter()

    z, means, variance = _solve(feats, probs, symmetric, lambda_=lambda_, iterations=iterations, z_steps=z_steps,
                                init_confident=init_confident, entropy_weight=entropy_weight)
    done = time.perf_counter()

    timings = {"knn": graph_done - start, "solve": done - graph_done, "total": done - start}
    logger.info("transclip N=%d C=%d k=%d: graph %.2fs, %d z-blocks %.2fs",
                num_images, probs.shape[1], k, timings["knn"], iterations + 1, timings["solve"])
    return TransclipResult(probs=z.cpu(), labels=z.argmax(dim=1).cpu(), means=means.cpu(),
                           variance=variance.cpu(), k=k, knn_backend=neighbours.backend, timings=timings)


def _inputs(image_features: torch.Tensor, zero_shot: torch.Tensor | None, classifier: torch.Tensor | None,
            device: str | torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x D L2-normalised features, N x C zero-shot probabilities) on ``device`` (None: the
    features'), float64 for float64 features, else float32; at least 2 images."""
    device = torch.device(device) if device is not None else image_features.device
    dtype = torch.float64 if image_features.dtype == torch.float64 else torch.float32
    feats = nnf.normalize(_finite(image_features, "image_features").to(device, dtype), dim=1)
    if feats.shape[0] < 2:
        raise ReclipError(f"transclip needs at least 2 images, got {feats.shape[0]}")
    return feats, _zero_shot(feats, zero_shot, classifier).to(device, dtype)


def _solve(feats: torch.Tensor, probs: torch.Tensor, symmetric: torch.Tensor, *, lambda_: float, iterations: int,
           z_steps: int, init_confident: int,
           entropy_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The published iterations on (N x D) ``feats``, (N x C) zero-shot ``probs`` and the sparse
    (W + W^T) / (2k) ``symmetric``: ``iterations + 1`` blocks of ``z_steps`` z-steps, the class
    means and shared variance updated between blocks. Returns (z N x C, means C x D, variance D)."""
    log_prior = lambda_ * probs.clamp(min=PROB_FLOOR).log()
    z = probs
    means = initial_means(feats, probs, init_confident)
    variance = torch.full((feats.shape[1],), 1.0 / feats.shape[1], device=feats.device, dtype=feats.dtype)
    for block in range(iterations + 1):
        mixture = gaussian_log_likelihood(feats, means, variance) / entropy_weight
        for _ in range(z_steps):
            z = torch.softmax(log_prior + mixture + torch.sparse.mm(symmetric, z), dim=1)
        if block == iterations:
            break
        means = class_means(feats, z)
        variance = shared_variance(feats, z, means)
    return z, means, variance


def gaussian_log_likelihood(feats: torch.Tensor, means: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """(N x C) ``-1/2 sum_d (f_id - mu_kd)^2 / var_d``, expanded so no N x C x D tensor is formed."""
    precision = 1.0 / variance
    quadratic = (feats.square() @ precision)[:, None] - 2.0 * feats @ (means * precision).T
    return -0.5 * (quadratic + (means.square() @ precision)[None, :])


def initial_means(feats: torch.Tensor, probs: torch.Tensor, count: int) -> torch.Tensor:
    """(C x D) ``normalise(sum_i y_ik f_i)`` over the ``count`` images with the highest ``y_ik``."""
    top = probs.topk(min(count, feats.shape[0]), dim=0)  # count x C values and indices
    sums = (top.values[:, :, None] * feats[top.indices]).sum(dim=0)
    return nnf.normalize(sums, dim=1)


def class_means(feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(C x D) ``mu_k = normalise(sum_i z_ik f_i / sum_i z_ik)``: the L2-normalised weighted means."""
    return nnf.normalize(z.T @ feats, dim=1)  # dividing by sum_i z_ik does not change the direction


def shared_variance(feats: torch.Tensor, z: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(D,) ``1/N sum_i sum_k z_ik (f_id - mu_kd)^2``, accumulated over chunks of images (no N x C x D
    tensor); clamped to a tiny positive value so the precision stays finite."""
    total = torch.zeros(feats.shape[1], device=feats.device, dtype=feats.dtype)
    chunk = max(1, VARIANCE_CHUNK_ELEMENTS // max(1, means.numel()))
    for lo in range(0, feats.shape[0], chunk):
        diff = feats[lo:lo + chunk, None, :] - means[None, :, :]  # chunk x C x D
        total += torch.einsum("ic,icd->d", z[lo:lo + chunk], diff.square())
    return (total / feats.shape[0]).clamp(min=torch.finfo(feats.dtype).eps)


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


def _check_options(*, k: int, lambda_: float, iterations: int, z_steps: int, init_confident: int,
                   entropy_weight: float, knn: str) -> None:
    if knn not in KNN_METHODS:
        raise ReclipError(f"knn must be one of {KNN_METHODS}, got {knn!r}")
    if iterations < 0:
        raise ReclipError(f"iterations must be at least 0, got {iterations}")
    for name, value in (("k", k), ("z_steps", z_steps),
                        ("init_confident", init_confident)):
        if value < 1:
            raise ReclipError(f"{name} must be at least 1, got {value}")
    for name, value in (("lambda_", lambda_), ("entropy_weight", entropy_weight)):
        if not value > 0:
            raise ReclipError(f"{name} must be > 0, got {value}")
