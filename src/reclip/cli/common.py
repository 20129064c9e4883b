"""Options and setup shared by the sub-commands: model, dataset and prompts."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.datasets import ImageDataset, load_dataset
from ..data.prompts import get_templates, read_templates
from ..errors import ReclipError
from ..models.base import DualEncoder
from ..models.factory import load_model


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required,
                   help="tiny, bridge, an open_clip architecture (ViT-B-32, ViT-L-14, RN50, ...), "
                        "hf-hub:org/repo, local-dir:/path, hf:org/repo or hf:/path")
    g.add_argument("--pretrained", default=None,
                   help="open_clip weights: a tag (openai, laion2b_s34b_b79k, ...) or a local file")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def add_data_options(p: argparse.ArgumentParser, with_prompts: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True,
                   help="a folder of class subfolders, a flat folder of images (with --classnames), "
                        "a CSV/TSV of path[,label], or a benchmark name (cifar10, fashion-mnist, ...)")
    g.add_argument("--data-root", default=None, help="where a named benchmark lives (or is downloaded to)")
    g.add_argument("--split", default="test", help="benchmark split (default: test)")
    g.add_argument("--classnames", default=None, help="file with one class name per line (a|b for synonyms)")
    if with_prompts:
        g.add_argument("--templates", default=None, help="file with one prompt template per line, each with {}")
    g.add_argument("--max-images", type=int, default=None,
                   help="use a seeded random subset of this many images (quick runs)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=None, help="data-loading processes (default: cores - 1, at most 4)")
    g.add_argument("--strict", action="store_true", help="abort on an unreadable image instead of skipping it")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the image-feature cache")


@dataclass
class Setup:
    model: DualEncoder
    dataset: ImageDataset
    templates: list[str]


def positive(value: int | float, flag: str) -> None:
    if value <= 0:
        raise ReclipError(f"{flag} must be positive, got {value}")


def load_setup(args: argparse.Namespace, model: DualEncoder | None = None) -> Setup:
    """Build the model (unless given) and the dataset it will read, with the prompt templates."""
    positive(args.batch_size, "--batch-size")
    if model is None:
        model = load_model(args.model, args.pretrained, args.device)
    dataset = load_dataset(args.dataset, root=args.data_root, split=args.split,
                           transform=model.preprocess, classnames=args.classnames, strict=args.strict)
    if args.max_images is not None:
        positive(args.max_images, "--max-images")
        if args.max_images < len(dataset):
            # a fixed seed, so every run (and the feature cache) sees the same subset
            chosen = np.random.default_rng(0).choice(len(dataset), args.max_images, replace=False)
            dataset = dataset.subset(np.sort(chosen))
    templates_file = getattr(args, "templates", None)
    templates = read_templates(templates_file) if templates_file else (dataset.templates or get_templates(None))
    return Setup(model, dataset, templates)


def out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ReclipError(f"--out {out} is a file; pass a folder for the outputs")
    out.mkdir(parents=True, exist_ok=True)
    return out
