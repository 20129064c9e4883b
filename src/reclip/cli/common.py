"""Options shared by the sub-commands, and how they become library calls."""
from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from ..data.datasets import ImageDataset, load_dataset
from ..data.prompts import read_templates
from ..data.sampling import random_subset
from ..errors import ReclipError
from ..method.config import ALPHA_APART, ALPHA_CONTRASTIVE, CHOICES, ReclipConfig
from ..models.base import DualEncoder
from ..models.factory import load_model

# library parameters whose flag is not simply --<name with dashes>
FLAGS = {"cache": "--no-cache", "project": "--no-project", "agreement_filter": "--no-agreement-filter",
         "calibrate": "--no-calibrate"}


def flag(param: str) -> str:
    """The command-line flag of a library parameter ("lr_v" -> "--lr-v")."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


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
    g.add_argument("--batch-size", type=int, default=ReclipConfig.batch_size)
    g.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: with --threads, within the cores this process may use)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch's intra-op threads (default: the cores this process may use, less the workers)")
    g.add_argument("--strict", action="store_true", help="abort on an unreadable image instead of skipping it")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the image-feature cache")


def add_method_options(p: argparse.ArgumentParser) -> None:
    """Every ``ReclipConfig`` field as a flag (dest = the field's name)."""
    d = ReclipConfig()
    g = p.add_argument_group("method")
    g.add_argument("--mode", choices=CHOICES["mode"], default=d.mode,
                   help="reclip (both branches), v-only, t-only, transductive (label propagation alone) "
                        "or transclip (TransCLIP-style), both training-free, or zero-shot")
    g.add_argument("--epochs", type=int, default=None, help="default: N // 5000 + 2")
    g.add_argument("--lr-v", type=float, default=d.lr_v, help=f"ReCLIP-V learning rate (default {d.lr_v})")
    g.add_argument("--lr-t", type=float, default=d.lr_t, help=f"ReCLIP-T learning rate (default {d.lr_t})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--k", type=int, default=d.k, help=f"neighbours in the label-propagation graph ({d.k})")
    g.add_argument("--alpha", type=float, default=None,
                   help=f"label-propagation alpha (default: {ALPHA_CONTRASTIVE} on CLIP-family models, "
                        f"{ALPHA_APART} on the bridge)")
    g.add_argument("--cut-dim", type=int, default=None,
                   help="projection rank r (default: D, or 250 above 500 classes as the authors' ImageNet runs)")
    g.add_argument("--knn", choices=CHOICES["knn"], default=d.knn, help="exact or approximate k-NN graph")
    g.add_argument("--image-edges", choices=CHOICES["image_edges"], default=d.image_edges,
                   help="label-propagation graph: image-image similarities in the projection space "
                        "(projected, the paper's) or of the full features (full); default auto: "
                        "projected on CLIP-family models, full on the bridge")
    g.add_argument("--knn-backend", choices=[c for c in CHOICES["knn_backend"] if c], default=None,
                   help="k-NN library (default: the faster one on this machine, measured)")
    g.add_argument("--v-loss", choices=CHOICES["v_loss"], default=d.v_loss,
                   help="reference: the authors' mean(CE*mask)/sum(mask), V's step divided by the batch "
                        "size (default); mean: masked mean like T")
    g.add_argument("--v-graph", choices=CHOICES["v_graph"], default=d.v_graph,
                   help="V's label-propagation class nodes: text (the original text embeddings, as the authors' "
                        "code; default) or centroids (V's current classifier)")
    g.add_argument("--v-tower", choices=CHOICES["v_tower"], default=d.v_tower,
                   help="train (V trains its image tower's norm affines), frozen (V's classifier still follows "
                        "its label-propagation centroids) or auto (default: train for CLIP-family models, frozen "
                        "for the bridge, whose towers were trained apart)")
    g.add_argument("--t-template", default=None,
                   help="the template ReCLIP-T trains and classifies with (default: the first template)")
    g.add_argument("--no-project", dest="project", action="store_false",
                   help="ablation: build the label-propagation graph on unprojected features")
    g.add_argument("--no-agreement-filter", dest="agreement_filter", action="store_false",
                   help="ablation: each branch trains on all its pseudo labels, not only the agreed ones")
    g.add_argument("--pseudo-labels", choices=CHOICES["pseudo_labels"], default=d.pseudo_labels,
                   help="ablation: zero-shot trains on each branch's own predictions instead of propagated labels")
    g.add_argument("--safeguard", type=float, default=d.safeguard,
                   help="reclip mode: keep the zero-shot predictions when T's and V's heads agree on less than "
                        f"this share of the images at the end (default {d.safeguard:g}, chosen on dev targets; 0: off)")
    g.add_argument("--safeguard-gain", type=float, default=d.safeguard_gain,
                   help="reclip mode: keep the zero-shot predictions when label propagation's estimate of the "
                        "adapted predictions' top-1 gain over zero-shot is at most this "
                        f"(default {d.safeguard_gain:g}; -1: off)")
    g.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="reclip mode: keep the raw confidences (default: a temperature makes their mean "
                        "equal label propagation's mean confidence on the frozen model)")
    g.add_argument("--seed", type=int, default=d.seed)


def config_from_args(args: argparse.Namespace, **fixed: object) -> ReclipConfig:
    """The validated ``ReclipConfig`` of the parsed flags (``fixed`` overrides)."""
    names = ReclipConfig.__dataclass_fields__
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if hasattr(args, "no_cache"):
        values["cache"] = not args.no_cache
    return ReclipConfig(**{**values, **fixed})


def load_inputs(args: argparse.Namespace, model: DualEncoder | None = None,
                classnames: object = None) -> tuple[DualEncoder, ImageDataset, list[str] | None]:
    """The model (unless given), the dataset (``--max-images`` applied) and ``--templates``."""
    if args.max_images is not None and args.max_images < 1:  # before the model is loaded
        raise ReclipError(f"--max-images must be positive; got {args.max_images}")
    if model is None:
        model = load_model(args.model, args.pretrained, args.device)
    dataset = load_dataset(args.dataset, root=args.data_root, split=args.split, transform=model.preprocess,
                           classnames=args.classnames if args.classnames is not None else classnames,
                           strict=args.strict)
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
