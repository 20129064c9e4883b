"""Step 0 of docs/method.md: the prompt-ensemble text classifier, and zero-shot logits."""
from __future__ import annotations

import torch
from torch.nn.functional import normalize

from ..models.base import DualEncoder

LOGIT_SCALE = 100.0  # CLIP's learned temperature at convergence; docs/method.md uses it for every head


def class_embeddings(model: DualEncoder, classnames: list[list[str]], templates: list[str],
                     batch_size: int = 512) -> torch.Tensor:
    """C x D classifier: for each class, every (template, synonym) prompt is embedded and
    L2-normalised, the prompts are averaged and the mean is L2-normalised again.

    Runs with gradients when the caller has them enabled (ReCLIP-T trains through it).
    """
    return ensemble_classifiers(model, classnames, templates, batch_size)[0]


def ensemble_classifiers(model: DualEncoder, classnames: list[list[str]], templates: list[str],
                         batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(C x D classifier over all templates, C x D classifier over the first template only),
    from one encoding of the prompts."""
    prompts = [t.replace("{}", s) for names in classnames for t in templates for s in names]
    owner = torch.tensor([c for c, names in enumerate(classnames) for _ in templates for _ in names])
    first = torch.tensor([i == 0 for names in classnames for i in range(len(templates)) for _ in names])
    emb = torch.cat([model.encode_text(model.tokenize(prompts[i:i + batch_size]))
                     for i in range(0, len(prompts), batch_size)])
    owner, first = owner.to(emb.device), first.to(emb.device)

    def average(rows: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(len(classnames), emb.shape[1], device=emb.device, dtype=emb.dtype)
        return normalize(sums.index_add(0, owner[rows], emb[rows]), dim=-1)

    return average(torch.ones_like(first)), average(first)


def zero_shot_logits(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """N x D image features, C x D classifier -> N x C logits (scaled by 100)."""
    return LOGIT_SCALE * image_features @ classifier.T
