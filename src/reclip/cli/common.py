"""Options shared by the sub-commands, and how they become library calls."""
from __future__ import annotations

import argparse
import signal
from dataclasses import Field, fields
from collections.abc import Iterator
from contextlib import contextmanager

from ..data.datasets import ImageDataset, load_dataset
from ..data.prompts import read_templates
from ..data.sampling import random_subset
from ..errors import ReclipError
from ..method.config import CHOICES, ConfigError, ReclipConfig
from ..models.base import DualEncoder
from ..models.factory import check_device, check_model, load_model

# the settings that every command reading images has (the data group); the rest is the method group
DATA_SETTINGS = ("batch_size", "workers", "threads", "cache")
FIELDS: dict[str, Field] = {f.name: f for f in fields(ReclipConfig)}
# library parameters that are not ReclipConfig fields and whose flag is not --<name with dashes>
OTHER_FLAGS = {"spec": "--model", "root": "--data-root"}


def flag(param: str) -> str:
    """The command-line flag of a library parameter ("lr_v" -> "--lr-v"; a setting that is on by
    default, "project" -> "--no-project")."""
    if param in OTHER_FLAGS:
        return OTHER_FLAGS[param]
    name = param.replace("_", "-")
    field = FIELDS.get(param)
    return f"--no-{name}" if field is not None and field.default is True else f"--{name}"


def add_setting(group: argparse._ArgumentGroup, name: str) -> None:
    """The flag of the ``ReclipConfig`` field ``name``, generated from its metadata (dest = the
    field's name): a switch for a setting on by default, choices where the field has them."""
    field = FIELDS[name]
    meta = field.metadata
    if meta["kind"] is bool:
        group.add_argument(flag(name), dest=name, action="store_false", help=meta["help"])
        return
    choices = [c for c in CHOICES.get(name, ()) if c is not None] or None
    shown = "" if field.default is None or "default" in meta["help"] else f" (default {field.default})"
    group.add_argument(flag(name), dest=name, type=meta["kind"], choices=choices, default=field.default,
                       help=meta["help"] + shown)


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
                        "a CSV/TSV of path[,label], wds:shards, or a benchmark name (cifar10, fashion-mnist, ...)")
    g.add_argument("--data-root", default=None, help="where a named benchmark lives (or is downloaded to)")
    g.add_argument("--split", default="test", help="benchmark split (default: test)")
    g.add_argument("--classnames", default=None, help="file with one class name per line (a|b for synonyms)")
    if with_prompts:
        g.add_argument("--templates", default=None, help="file with one prompt template per line, each with {}")
    g.add_argument("--max-images", type=int, default=None,
                   help="use a seeded random subset of this many images (quick runs)")
    for name in DATA_SETTINGS:
        add_setting(g, name)
    g.add_argument("--strict", action="store_true", help="abort on an unreadable image instead of skipping it")


def add_method_options(p: argparse.ArgumentParser) -> None:
    """Every other ``ReclipConfig`` field as a flag, generated from the field's metadata."""
    g = p.add_argument_group("method")
    for name in FIELDS:
        if name not in DATA_SETTINGS:
            add_setting(g, name)


def config_from_args(args: argparse.Namespace, **fixed: object) -> ReclipConfig:
    """The validated ``ReclipConfig`` of the parsed flags (``fixed`` overrides)."""
    values = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    check_epochs(values.get("epochs"))
    return ReclipConfig(**{**values, **fixed})


def check_epochs(epochs: int | None) -> None:
    """``--epochs 0`` trains nothing, so the command line refuses it (the library accepts it)."""
    if epochs is not None and epochs < 1:
        raise ConfigError("epochs", f"must be at least 1; got {epochs} (for no training, use --mode zero-shot "
                                    "or reclip zeroshot)")


def load_inputs(args: argparse.Namespace, model: DualEncoder | None = None,
                classnames: object = None) -> tuple[DualEncoder, ImageDataset, list[str] | None]:
    """The model (unless given), the dataset (``--max-images`` applied) and ``--templates``."""
    if args.max_images is not None and args.max_images < 1:  # before the model is loaded
        raise ReclipError(f"--max-images must be positive; got {args.max_images}")
    # cheap checks first: the model's name, then the data, and only then the (slow) model
    if model is None:
        check_model(args.model, args.pretrained)
        if args.device is not None:
            check_device(args.device)
    dataset = load_dataset(args.dataset, root=args.data_root, split=args.split,
                           classnames=args.classnames if args.classnames is not None else classnames,
                           strict=args.strict)
    if model is None:
        model = load_model(args.model, args.pretrained, args.device)
    dataset.transform = model.preprocess
    if args.max_images is not None:
        dataset = random_subset(dataset, args.max_images)
    templates_file = getattr(args, "templates", None)
    return model, dataset, read_templates(templates_file) if templates_file else None


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C inside the block (every output is written atomically)."""
    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def safeguard_line(metrics: dict) -> str | None:
    """One line on a reclip run that kept its adapted predictions: the safeguard's signal and the
    calibration; None otherwise (a fallback to zero-shot is announced by its own warning)."""
    guard = metrics.get("safeguard")
    if guard is None or guard["kept"] != "adapted":
        return None
    line = f"safeguard: {guard['reason']}; adapted predictions kept"
    if guard.get("confidence_target") is not None:
        line += (f"; confidences calibrated to a mean of {100 * guard['confidence_target']:.1f}% "
                 f"(label propagation's mean confidence; temperature {guard['temperature']:.2f})")
    return line


def print_table(rows: list[tuple[str, dict]]) -> None:
    """One line per method: top-1, top-5, mean per-class recall, ECE (when labels exist)."""
    keys = ("top1", "top5", "mean_per_class_recall", "ece")
    print(f"{'method':<14}" + "".join(f"{k:>24}" for k in keys))
    for name, m in rows:
        print(f"{name:<14}" + "".join(f"{m[k]:>24.4f}" if k in m else f"{'-':>24}" for k in keys))
