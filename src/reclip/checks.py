"""Argument checks of the public API, each failing with an ``ArgumentError`` that names the
argument in one line.

Numbers: a whole number may be a Python or numpy integer, or a float (Python or numpy) with
no fractional part; a real number may be any of those. Both come back as Python ``int`` /
``float``, so they serialise to JSON like the defaults.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data.prompts import PLACEHOLDER
from .errors import ArgumentError, ReclipError

if TYPE_CHECKING:
    from .data.datasets import ImageDataset
    from .models.base import DualEncoder

#: Seeds are drawn from [0, MAX_SEED]: torch, numpy and the per-epoch shuffle seed
#: (seed * 100_003 + epoch, below 2**63) all accept every value in it.
MAX_SEED = 2**32 - 1


def shown(value: Any) -> str:
    """A value as an error message shows it: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def whole_number(value: Any, name: str, minimum: int | None = None, maximum: int | None = None,
                 error: type[ArgumentError] = ArgumentError) -> int:
    """``value`` as a Python int: an int, a numpy integer or an integral float; never a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(name, f"must be a whole number; got {shown(value)}")
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(float(value)) or float(value) != int(float(value)):
            raise error(name, f"must be a whole number; got {float(value):g}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise error(name, f"must be at least {minimum}; got {number}")
    if maximum is not None and number > maximum:
        raise error(name, f"must be at most {maximum}; got {number}")
    return number


def real_number(value: Any, name: str, error: type[ArgumentError] = ArgumentError) -> float:
    """``value`` as a finite Python float (ints and numpy numbers accepted; never a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(name, f"must be a finite number; got {shown(value)}")
    if not math.isfinite(float(value)):
        raise error(name, f"must be a finite number; got {float(value)}")
    return float(value)


def seed(value: Any, name: str = "seed", error: type[ArgumentError] = ArgumentError) -> int:
    """A random seed in [0, MAX_SEED]."""
    return whole_number(value, name, minimum=0, maximum=MAX_SEED, error=error)


def path_argument(value: Any, name: str) -> Path:
    """A non-empty path given as a str or ``os.PathLike``."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(name, f"must be a path (str or pathlib.Path); got {shown(value)}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise ArgumentError(name, "is an empty path; pass a file or folder name (use '.' for the current folder)")
    return Path(text).expanduser()


def model_argument(model: Any, name: str = "model") -> "DualEncoder":
    from .models.base import DualEncoder

    if not isinstance(model, DualEncoder):
        raise ArgumentError(name, f"must be a model from reclip.load_model(...); got {shown(model)}")
    return model


def dataset_argument(dataset: Any, name: str = "dataset") -> "ImageDataset":
    """An ``ImageDataset`` with at least one image and a transform (its images must become tensors)."""
    from .data.datasets import ImageDataset

    if not isinstance(dataset, ImageDataset):
        hint = (f"load it first: reclip.load_dataset({os.fspath(dataset)!r}, transform=model.preprocess)"
                if isinstance(dataset, (str, os.PathLike)) else "load one with reclip.load_dataset(...)")
        raise ArgumentError(name, f"must be an ImageDataset; got {shown(dataset)}; {hint}")
    if len(dataset) == 0:
        raise ArgumentError(name, f"{dataset.spec} is empty (0 images{', an empty subset' if dataset.is_subset else ''}); "
                                  "pass a dataset with images")
    if dataset.transform is None:
        raise ArgumentError(name, f"{dataset.spec} has no transform, so its images cannot become tensors; "
                                  "load it with reclip.load_dataset(..., transform=model.preprocess)")
    return dataset


def templates_argument(templates: Any, name: str = "templates") -> list[str] | None:
    """None, or a non-empty list of strings that each hold ``{}``."""
    if templates is None:
        return None
    if isinstance(templates, str):
        raise ArgumentError(name, f"must be a list of templates, not one string; write {name}=[{templates!r}]")
    if not isinstance(templates, Sequence):
        raise ArgumentError(name, f"must be a list of templates with {{}}; got {shown(templates)}")
    chosen = list(templates)
    if not chosen:
        raise ArgumentError(name, "is empty; give at least one template with {} where the class name goes")
    for i, template in enumerate(chosen):
        if not isinstance(template, str):
            raise ArgumentError(name, f"entry {i} must be a string; got {shown(template)}")
        if PLACEHOLDER not in template:
            raise ArgumentError(name, f"entry {i}: template {template!r} has no {{}} where the class name goes")
    return chosen


def instance_argument(value: Any, kind: type, name: str, hint: str) -> Any:
    """``value`` when it is a ``kind``; else one line naming ``name`` and ``hint``."""
    if not isinstance(value, kind):
        raise ArgumentError(name, f"must be a {kind.__name__}; got {shown(value)}; {hint}")
    return value


def dataset_inputs(dataset: "ImageDataset", names: Sequence[str]) -> list[Path]:
    """The inputs of ``dataset`` that outputs named ``names`` could destroy: its root (folder or
    list file) and its image files bearing one of those names."""
    wanted = set(names)
    files = [Path(f) for f in dataset.paths or () if os.path.basename(f) in wanted]
    return [Path(dataset.root), *files]


def adapter_fits(adapter: Any, model: Any) -> None:
    """Refuse a model that the adapter was not made for, naming the one it was made for."""
    model_argument(model)
    made_for = f"{adapter.meta.get('model')}" + (f" (pretrained {adapter.meta['pretrained']})"
                                                 if adapter.meta.get("pretrained") else "")
    problem = None
    image, text = model.named_image_norm_state(), model.named_text_norm_parameters()
    for values, params in ((adapter.image_norms, image), (adapter.text_norms, text)):
        for key, value in values.items():
            if key not in params:
                problem = f"it has no parameter {key}"
            elif tuple(params[key].shape) != tuple(value.shape):
                problem = f"its {key} has shape {tuple(params[key].shape)}, the adapter's {tuple(value.shape)}"
            if problem:
                break
        if problem:
            break
    if problem is None:
        width = _embedding_width(model)
        if width != adapter.v_classifier.shape[1]:
            problem = f"its embeddings have {width} dimensions, the adapter's {adapter.v_classifier.shape[1]}"
    if problem is not None:
        raise ReclipError(f"the adapter was made for model {made_for} and does not fit model {model.spec} "
                          f"({problem}); pass --model/--pretrained {made_for.split(' ')[0]} or that model")


def _embedding_width(model: "DualEncoder") -> int:
    """The width D of the model's embeddings (one short prompt through the text tower)."""
    import torch

    with torch.inference_mode():
        return int(model.encode_text(model.tokenize(["a photo of a cat."])).shape[-1])
