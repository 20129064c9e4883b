"""``reclip adapt``: ReCLIP self-training (or training-free label propagation) on a dataset.

Data flow: model + dataset -> frozen features (cached, shared with ``zeroshot``) ->
zero-shot metrics -> either label propagation alone (``--mode transductive``) or the
ReCLIP loop (``reclip.method.reclip.adapt``) -> metrics.json, predictions.csv,
adapter.safetensors, report.png, checkpoint/.
"""
from __future__ import annotations

import argparse
import resource
import signal
import sys
import time
from pathlib import Path

import torch

from .. import distributed
from ..errors import ReclipError
from ..features import Features
from ..io import write_json, write_predictions
from ..method.adapter import ADAPTER_FILE, Adapter, adapter_meta, snapshot
from ..method.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from ..method.propagation import label_propagation
from ..method.reclip import MODES, ReclipConfig, adapt, config_dict
from ..metrics import classification_metrics, scores_to_probabilities
from ..report import plot_report
from .common import Setup, add_data_options, add_model_options, load_setup, out_dir, positive
from .zeroshot import describe, print_table, zero_shot


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt a model to unlabelled target images (ReCLIP)",
                       description="ReCLIP source-free adaptation. Writes metrics.json, predictions.csv, "
                                   "adapter.safetensors, report.png and checkpoint/ to --out.")
    add_model_options(p)
    add_data_options(p)
    g = p.add_argument_group("method")
    g.add_argument("--mode", choices=MODES + ("transductive",), default="reclip",
                   help="reclip (both branches), v-only, t-only, or transductive (label propagation "
                        "alone, no training)")
    d = ReclipConfig()
    g.add_argument("--epochs", type=int, default=None, help="default: N // 5000 + 2")
    g.add_argument("--lr-v", type=float, default=d.lr_v, help=f"ReCLIP-V learning rate (default {d.lr_v})")
    g.add_argument("--lr-t", type=float, default=d.lr_t, help=f"ReCLIP-T learning rate (default {d.lr_t})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--k", type=int, default=d.k, help=f"neighbours in the label-propagation graph ({d.k})")
    g.add_argument("--alpha", type=float, default=d.alpha, help=f"label-propagation alpha ({d.alpha})")
    g.add_argument("--cut-dim", type=int, default=None, help="projection rank r (default: D)")
    g.add_argument("--knn", choices=("exact", "approx"), default="exact")
    g.add_argument("--v-loss", choices=("mean", "reference"), default=d.v_loss,
                   help="reference: the authors' mean(CE*mask)/sum(mask), V's step divided by the batch "
                        "size (default); mean: masked mean like T")
    g.add_argument("--v-graph", choices=("centroids", "text"), default=d.v_graph,
                   help="V's label-propagation class nodes: centroids (its current classifier, default) "
                        "or text (the original text embeddings, as the authors' code)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def make_config(args: argparse.Namespace) -> ReclipConfig:
    for flag in ("batch_size", "lr_v", "lr_t", "k"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.epochs is not None and args.epochs < 0:
        raise ReclipError(f"--epochs must be 0 or more, got {args.epochs}")
    if not 0 < args.alpha < 1:
        raise ReclipError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.cut_dim is not None and args.cut_dim < 2:
        raise ReclipError(f"--cut-dim must be at least 2, got {args.cut_dim}")
    return ReclipConfig(mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr_v=args.lr_v,
                        lr_t=args.lr_t, weight_decay=args.weight_decay, k=args.k, alpha=args.alpha,
                        cut_dim=args.cut_dim, knn=args.knn, v_loss=args.v_loss, v_graph=args.v_graph, seed=args.seed,
                        workers=args.workers)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> None:
    make_config(args)  # option errors first, before any model is loaded
    execute(args, load_setup(args))


def execute(args: argparse.Namespace, setup: Setup) -> dict:
    """Run ``reclip adapt`` with ``args`` on an already loaded model and dataset; returns metrics."""
    start = time.perf_counter()
    out = out_dir(args.out)
    config = make_config(args)
    torch.manual_seed(args.seed)
    feats, classifier, zs_logits = zero_shot(setup, args)
    zs_metrics = classification_metrics(zs_logits.softmax(dim=-1), feats.labels)
    base = {"task": "adapt", "mode": args.mode, **describe(setup, feats), "zero_shot": zs_metrics}
    if config.mode == "transductive":
        return run_transductive(setup, feats, classifier, config, base, start, out)

    identity = {"model": setup.model.spec, "pretrained": setup.model.pretrained,
                "dataset": setup.dataset.fingerprint(), "n": len(feats.indices), "config": config_dict(config)}
    resumed = load_checkpoint(out, setup.model, identity) if args.resume else None
    state, opt_state = resumed if resumed else (None, None)
    if args.resume and distributed.is_main():
        print(f"resuming after epoch {state.epoch} from {out / CHECKPOINT}" if state is not None
              else f"no checkpoint in {out}; starting from the beginning")

    def checkpoint(state, optimizers):
        save_checkpoint(out, setup.model, state, optimizers, identity)

    # SIGTERM behaves like Ctrl-C: every file is written atomically, so stopping is safe.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        state, f_v, logits = adapt(setup.model, setup.dataset, feats, setup.templates, config, state,
                                   on_epoch_end=checkpoint, optimizer_state=opt_state)
    except KeyboardInterrupt:
        print(f"reclip: stopped; outputs so far are complete. Continue with the same command plus "
              f"--resume (checkpoint: {out / CHECKPOINT})", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if not distributed.is_main():
        return {}
    probs = logits.softmax(dim=-1)
    final = classification_metrics(probs, feats.labels)
    if final:
        known = feats.labels >= 0
        final["top1_t"] = ((feats.features @ state.heads.t_classifier.T).argmax(-1) == feats.labels)[known].float().mean().item()
        final["top1_v"] = ((f_v @ state.heads.v_classifier.T).argmax(-1) == feats.labels)[known].float().mean().item()
    model = setup.model
    adapter = Adapter(image_norms=snapshot(model.named_image_norm_parameters()) if config.trains_v else {},
                      text_norms=snapshot(model.named_text_norm_parameters()) if config.trains_t else {},
                      v_classifier=state.heads.v_classifier, t_classifier=state.heads.t_classifier,
                      extra_state=model.extra_state(),
                      meta=adapter_meta(model, setup.dataset.classnames, setup.templates, config.mode,
                                        config_dict(config)))
    adapter.save(out / ADAPTER_FILE)
    write_predictions(out / "predictions.csv", feats.indices, probs, setup.dataset.classnames, setup.dataset.paths)
    frozen_pass = 0.0 if feats.from_cache else 1.0
    metrics = {**base, "config": config_dict(config), "epochs": state.history, "final": final,
               "passes": {"image_forward": state.passes_forward + frozen_pass,
                          "image_backward": state.passes_backward},
               "seconds": round(time.perf_counter() - start, 3),
               "peak_memory_mb": round(peak_memory_mb(model.device), 1)}
    write_json(out / "metrics.json", metrics)
    plot_report(out / "report.png", state.history, zs_metrics, final,
                f"ReCLIP ({config.mode}) - {model.name} on {setup.dataset.name}")
    print_table([("zero-shot", zs_metrics), (config.mode, final)])
    print(f"wrote {out}/{{metrics.json,predictions.csv,{ADAPTER_FILE},report.png}} in {metrics['seconds']:.1f} s")
    return metrics


def run_transductive(setup: Setup, feats: Features, classifier: torch.Tensor, config: ReclipConfig,
                     base: dict, start: float, out: Path) -> dict:
    """Label propagation alone on the frozen features (the ZLaP-style training-free peer)."""
    lp = label_propagation(feats.features, classifier, k=config.k, alpha=config.alpha, cut_dim=config.cut_dim,
                           knn=config.knn, device=setup.model.device)
    if not distributed.is_main():
        return {}
    probs = scores_to_probabilities(lp.scores)
    final = classification_metrics(probs, feats.labels)
    write_predictions(out / "predictions.csv", feats.indices, probs, setup.dataset.classnames, setup.dataset.paths)
    metrics = {**base, "config": {"k": lp.k, "alpha": config.alpha, "cut_dim": config.cut_dim, "knn": config.knn},
               "final": final, "propagation": {"knn_recall": lp.knn_recall, "timings": lp.timings},
               "seconds": round(time.perf_counter() - start, 3),
               "peak_memory_mb": round(peak_memory_mb(setup.model.device), 1)}
    write_json(out / "metrics.json", metrics)
    print_table([("zero-shot", base["zero_shot"]), ("transductive", final)])
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.csv'} in {metrics['seconds']:.1f} s")
    return metrics
