"""The target's class proportions, estimated without labels, and posteriors moved to them
(docs/method.md, "Classes kept in balance").

- :func:`estimate_priors`: the EM of Saerens, Latinne & Decaestecker (Neural Computation,
  2002) on N x C posteriors: the class proportions under which those posteriors, re-weighted
  by Bayes' rule from the prior they were made under, are their own mean. A class no image
  leans to goes to ~0: nothing forces every named class into the target.
- :func:`match_priors`: class mass normalisation (Zhu, Ghahramani & Lafferty, ICML 2003):
  one weight per class on the posteriors so that the mean re-weighted posterior equals the
  given proportions, so a common class cannot absorb the mass of a rare one.
"""
from __future__ import annotations

import torch

#: EM and mass normalisation stop when no proportion moves by more than this, or after MAX_ITERATIONS.
TOLERANCE = 1e-6
MAX_ITERATIONS = 1000
#: floor on a proportion: an absent class keeps this much so that a weight stays finite
FLOOR = 1e-8


def estimate_priors(posterior: torch.Tensor, source_prior: torch.Tensor | None = None,
                    iterations: int = MAX_ITERATIONS, tol: float = TOLERANCE) -> torch.Tensor:
    """(C,) float64 class proportions of the target (sum 1), by EM over the N x C ``posterior``
    (rows sum to 1) made under ``source_prior`` (C,; default uniform):

    ``pi_{k+1} = mean_i normalise(posterior_i * pi_k / source_prior)``, from ``pi_0 = source_prior``,
    until no proportion moves by more than ``tol``."""
    p = posterior.double().clamp(min=0)
    source = (torch.full((p.shape[1],), 1.0 / p.shape[1], dtype=torch.float64) if source_prior is None
              else source_prior.double() / source_prior.double().sum())
    prior = source.clone()
    for _ in range(iterations):
        adjusted = p * (prior / source)
        updated = (adjusted / adjusted.sum(dim=1, keepdim=True).clamp(min=1e-300)).mean(dim=0)
        moved = (updated - prior).abs().max().item()
        prior = updated
        if moved <= tol:
            break
    return prior / prior.sum()


def match_priors(posterior: torch.Tensor, priors: torch.Tensor, iterations: int = MAX_ITERATIONS,
                 tol: float = TOLERANCE) -> torch.Tensor:
    """N x C float32 ``posterior`` (rows sum to 1) re-weighted by one weight per class,
    ``normalise(posterior_i * w)``, with ``w`` found by fixed-point iteration
    ``w <- w * priors / mean_i normalise(posterior_i * w)`` so that the mean re-weighted row
    equals the (C,) ``priors`` (as far as the posterior's support allows)."""
    p = posterior.double().clamp(min=0)
    target = priors.double().clamp(min=FLOOR)
    weights = torch.ones(p.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        adjusted = p * weights
        adjusted = adjusted / adjusted.sum(dim=1, keepdim=True).clamp(min=1e-300)
        mean = adjusted.mean(dim=0)
        if (mean - target).abs().max().item() <= tol:
            break
        weights = weights * target / mean.clamp(min=FLOOR)
    adjusted = p * weights
    return (adjusted / adjusted.sum(dim=1, keepdim=True).clamp(min=1e-300)).float()


def balanced_labels(posterior: torch.Tensor) -> torch.Tensor:
    """(N,) classes of the N x C ``posterior`` (rows sum to 1) after ``match_priors`` to the
    class proportions ``estimate_priors`` finds in it."""
    return match_priors(posterior, estimate_priors(posterior)).argmax(dim=-1)
