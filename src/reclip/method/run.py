"""``ReCLIP``: the main job as one call, read top to bottom as stages.

``ReCLIP(model, config).fit(dataset)``:

1. the frozen view (``frozen.py``): features through the feature cache, the text classifier,
   zero-shot logits;
2. by ``config.mode``: stop there (``zero-shot``), a transducer on the frozen features
   (``transductive``: label propagation; ``transclip``), or the self-training loop
   (``selftrain.py``: ``reclip``, ``v-only``, ``t-only``), which returns its heads and logits;
3. for ``reclip``, the safeguard (``safeguard.py``): keep the adapted predictions or fall back
   to zero-shot, and calibrate;
4. a typed ``ReclipResult`` (``result.py``).

With ``out`` it owns the output folder: a checkpoint after every epoch, ``resume=True`` to
continue one, and the outputs written atomically at the end. The model's norm affines are
restored after training, and so are the image tower's BatchNorm statistics (target statistics
a model fits while encoding, the bridge's centring, stay fitted); ``result.adapter.apply(model)``
gives the adapted model.
"""
from __future__ import annotations

import contextlib
import resource
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import checks, distributed, progress, runtime
from ..data.datasets import ImageDataset
from ..data.prompts import get_templates
from ..errors import ArgumentError, ReclipError
from ..fingerprint import weights_fingerprint
from ..io import output_folder
from ..models.base import DualEncoder
from .adapter import Adapter, adapter_meta
from .callbacks import Callback, check_callbacks
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import ReclipConfig, profile_for
from .frozen import FrozenView, frozen_view
from .heads import Fusion, Heads, fuse, head_logits
from .result import OUTPUT_FILES, Passes, ReclipResult, RunInfo
from .safeguard import Decision, SafeguardWarning, confidence_target, frozen_posterior, head_agreement, judge_run
from .selftrain import RunState, adapt, branch_accuracies
from .transduce.base import Transducer
from .transduce.peers import LabelPropagation, TransCLIP
from .weights import load_into, snapshot

__all__ = ["ReCLIP", "ReclipResult", "SafeguardWarning", "Stages", "resolve_templates"]


@dataclass
class Stages:
    """The replaceable stages of a run; None: the ones ``config`` describes. ``pseudo_labels``:
    the transducer that gives each self-training branch its pseudo labels (and V its
    centroids); ``judge``: the safeguard's transducer on the frozen model; ``transducer``: the
    training-free modes' (label propagation or TransCLIP)."""

    pseudo_labels: Transducer | None = None
    judge: Transducer | None = None
    transducer: Transducer | None = None

    def resolved(self, config: ReclipConfig, num_classes: int, device: torch.device) -> "Stages":
        propagation = LabelPropagation(config.propagation_settings(num_classes), device)
        if config.mode == "transclip":
            default: Transducer = TransCLIP(config.k, config.knn, device)
        else:
            default = propagation
        return Stages(self.pseudo_labels or propagation, self.judge or propagation, self.transducer or default)


class ReCLIP:
    """Adapts ``model`` to unlabelled target images with the settings of ``config``.

    ``ReCLIP(model)`` uses the default ``ReclipConfig``; keyword arguments build one
    (``ReCLIP(model, mode="transductive")``) or override fields of the given one. ``stages``
    replaces stages of the run (``Stages``: its transducers).
    """

    def __init__(self, model: DualEncoder, config: ReclipConfig | None = None, *, stages: Stages | None = None,
                 **settings: Any) -> None:
        checks.model_argument(model)
        if config is not None:
            checks.instance_argument(config, ReclipConfig, "config", "build one with reclip.ReclipConfig(...)")
        if config is not None and settings:
            config = replace(config, **settings)
        self.model = model
        self.config = config if config is not None else ReclipConfig(**settings)
        self.stages = stages if stages is not None else Stages()

    def fit(self, dataset: ImageDataset, templates: Sequence[str] | None = None, out: str | Path | None = None,
            resume: bool = False, callbacks: Sequence[Callback] = ()) -> ReclipResult:
        """Run the job on the readable images of ``dataset``; see the module docstring.

        ``templates``: prompt templates with ``{}`` (default: the dataset's, else six generic
        ones); ReCLIP-T uses ``config.t_template`` or the first one. ``out``: output folder
        (checkpoints, and the outputs of ``ReclipResult.save``). ``resume``: continue the
        checkpoint in ``out`` (made with the same model, data, class names, templates and
        config; anything else is refused). Raises ``ReclipError`` for anything the user can fix.
        """
        templates, out, callbacks = _fit_arguments(self.model, dataset, templates, out, resume, callbacks)
        templates = resolve_templates(dataset, templates, self.config.t_template)
        callbacks = list(callbacks) if distributed.is_main() else []
        folder = (output_folder(out, OUTPUT_FILES, checks.dataset_inputs(dataset, OUTPUT_FILES))
                  if out is not None and distributed.is_main() else contextlib.nullcontext())
        norms = {**self.model.named_image_norm_state(), **self.model.named_text_norm_parameters()}
        pristine = snapshot(norms)
        with folder, progress.heartbeat(f"reclip {self.config.mode} on {dataset.name}"):
            try:
                result = _Run(self.model, self.config, self.stages, dataset, templates, callbacks).execute(
                    Path(out) if out is not None else None, resume)
            finally:
                load_into(norms, pristine, "model")
            if out is not None:
                result.save(out, dataset)
        for callback in callbacks:
            callback.on_fit_end(result)
        return result


def _fit_arguments(model: Any, dataset: Any, templates: Any, out: Any, resume: Any,
                   callbacks: Any) -> tuple[list[str] | None, Path | None, list[Callback]]:
    """The checks at the entry of ``ReCLIP.fit``: (templates, out, callbacks), checked; one line
    naming the argument otherwise."""
    checks.model_argument(model)
    checks.dataset_argument(dataset)
    templates = checks.templates_argument(templates)
    folder = None if out is None else checks.path_argument(out, "out")
    if not isinstance(resume, bool):
        raise ArgumentError("resume", f"must be True or False; got {checks.shown(resume)}")
    if resume and folder is None:
        raise ReclipError("resume=True needs out, the folder holding the checkpoint")
    if resume and not (folder / CHECKPOINT).is_file():
        raise ArgumentError("resume", f"finds no checkpoint in {folder} ({folder / CHECKPOINT} does not exist); "
                                      "check the folder, or start afresh without resume")
    return templates, folder, check_callbacks(callbacks)


def resolve_templates(dataset: ImageDataset, templates: Sequence[str] | None, t_template: str | None) -> list[str]:
    """The templates of a run, T's first: ``templates`` (or the dataset's, or the generic
    ones), with ``t_template`` moved or added to the front when given."""
    chosen = list(templates) if templates is not None else (dataset.templates or get_templates(None))
    if not chosen:
        raise ReclipError("templates is empty; give at least one template with {} where the class name goes")
    for t in chosen:
        if not isinstance(t, str) or "{}" not in t:
            raise ReclipError(f"template {t!r} has no {{}} where the class name goes")
    if t_template is not None:
        chosen = [t_template] + [t for t in chosen if t != t_template]
    return chosen


class _Run:
    """One execution of ``ReCLIP.fit`` (kept apart so ``fit`` reads as the outline)."""

    def __init__(self, model: DualEncoder, config: ReclipConfig, stages: Stages, dataset: ImageDataset,
                 templates: list[str], callbacks: list[Callback]) -> None:
        self.profile = profile_for(model.contrastive, model.image_norm)
        self.model, self.config, self.dataset, self.templates = model, config.resolve(self.profile), dataset, templates
        self.stages = stages.resolved(self.config, len(dataset.classnames), model.device)
        self.callbacks = callbacks
        self.start = time.perf_counter()

    def execute(self, out: Path | None, resume: bool) -> ReclipResult:
        config = self.config
        torch.manual_seed(config.seed)
        runtime.apply(config.threads, config.workers)
        view = frozen_view(self.model, self.dataset, self.templates, batch_size=config.batch_size,
                           workers=config.workers, cache=config.cache)
        zero_shot = view.zero_shot
        result = ReclipResult(config.mode, zero_shot, zero_shot, None, self._info(view), zero_shot.metrics(),
                              zero_shot.metrics(), title=f"ReCLIP ({config.mode}) - {self.model.name} on "
                                                          f"{self.dataset.name}",
                              logits={"zero_shot": view.zero_shot_logits})
        if config.mode in ("transductive", "transclip"):
            self._transduce(view, result)
        elif config.trains:
            self._self_train(view, out, resume, result)
        result.seconds = round(time.perf_counter() - self.start, 3)
        result.peak_memory_mb = round(_peak_memory_mb(self.model.device), 1)
        return result

    def _info(self, view: FrozenView) -> RunInfo:
        config, model, f = self.config, self.model, view.features
        return RunInfo(task="zeroshot" if config.mode == "zero-shot" else "adapt", mode=config.mode, model=model.spec,
                       pretrained=model.pretrained, dataset=self.dataset.spec, n=view.n,
                       **self.dataset.skipped_counts(f.skipped),
                       world_size=distributed.world(), config=config.to_dict(), profile=self.profile.as_dict(),
                       templates=self.templates,
                       images_per_s=round(view.n / f.seconds, 1) if f.seconds else None)

    def _transduce(self, view: FrozenView, result: ReclipResult) -> None:
        """A training-free mode: the stage's transducer on the frozen features."""
        transducer = self.stages.transducer
        classifier = view.first_template_classifier if transducer.first_template else view.classifier
        transduction = transducer(view.features.features, classifier)
        result.predictions = view.predictions(transduction.probs)
        result.final_metrics = result.predictions.metrics()
        result.transduction = (transducer.name, transduction.info)

    def _self_train(self, view: FrozenView, out: Path | None, resume: bool, result: ReclipResult) -> None:
        """The self-training loop, then (reclip mode) the safeguard."""
        if self.config.mode == "reclip":  # the safeguard's judge, which every epoch also records
            result.posterior = frozen_posterior(self.stages.judge, view.features.features, view.classifier)
        state, f_v = self._train(view, out, resume, result.posterior)
        logits_t, logits_v = head_logits(view.features.features, f_v, state.heads.t_classifier,
                                         state.heads.v_classifier)
        confidence = confidence_target(result.posterior) if result.posterior is not None else None
        combined, fusion = fuse(logits_t, logits_v, self.config.mode, self.config.head_fusion, confidence)
        result.logits.update(t=logits_t, v=logits_v, combined=combined)
        result.predictions = view.predictions(combined.softmax(dim=-1))
        result.final_metrics = result.predictions.metrics()
        if result.final_metrics:
            result.final_metrics.update({k: v for k, v in branch_accuracies(
                view.features.features, f_v, state.heads, view.features.labels, combined).items() if k != "top1"})
        result.adapter = self._adapter(state.heads, fusion)
        result.history = state.history
        frozen_pass = 0.0 if view.features.from_cache else 1.0
        result.passes = Passes(state.passes_forward + frozen_pass, state.passes_backward)
        if self.config.mode == "reclip":
            agreement = head_agreement(view.features.features, f_v, state.heads.t_classifier, state.heads.v_classifier)
            decision = judge_run(combined, agreement, result.posterior, result.zero_shot.pred,
                                 self.config.stage_settings("safeguard"))
            self._apply(decision, view, result)

    def _train(self, view: FrozenView, out: Path | None, resume: bool,
               posterior: torch.Tensor | None) -> tuple[RunState, torch.Tensor]:
        """Run (or resume) the loop with a checkpoint and the callbacks after each epoch (each
        recording the estimated gain under ``posterior`` when given); returns the final state
        and V's final N x D features."""
        model, config, dataset = self.model, self.config, self.dataset
        identity = {"model": model.spec, "pretrained": model.pretrained, "weights": weights_fingerprint(model),
                    "dataset": dataset.fingerprint(), "n": view.n, "classnames": dataset.classnames,
                    "templates": self.templates, "config": config.to_dict()}
        resumed = load_checkpoint(out, model, identity) if resume else None
        state, optimizer_state = resumed if resumed is not None else (None, None)
        epochs = config.num_epochs(view.n)
        for callback in self.callbacks:
            callback.on_fit_start({"n": view.n, "epochs": epochs, "resumed": resume,
                                   "resumed_epoch": state.epoch if state is not None else 0})

        def on_epoch_end(state: RunState, optimizers: dict) -> None:
            if out is not None and distributed.is_main():
                save_checkpoint(out, model, state, optimizers, identity)
            for callback in self.callbacks:
                callback.on_epoch_end(state.history[-1], epochs)

        state, f_v = adapt(model, dataset, view.features, self.templates, config, state, on_epoch_end=on_epoch_end,
                              optimizer_state=optimizer_state, posterior=posterior, propagate=self.stages.pseudo_labels)
        return state, f_v

    def _adapter(self, heads: Heads, fusion: Fusion) -> Adapter:
        model, config = self.model, self.config
        meta = adapter_meta(model, self.dataset.classnames, self.templates, config.mode, config.to_dict())
        meta["fusion"] = fusion.as_dict()
        return Adapter(image_norms=snapshot(model.named_image_norm_state()) if config.adapts_v_tower else {},
                       text_norms=snapshot(model.named_text_norm_parameters()) if config.trains_t else {},
                       v_classifier=heads.v_classifier, t_classifier=heads.t_classifier,
                       extra_state=model.extra_state(), meta=meta)

    def _apply(self, decision: Decision, view: FrozenView, result: ReclipResult) -> None:
        """Keep what the safeguard chose: the calibrated adapted predictions, or zero-shot (and an
        adapter whose two heads are the zero-shot classifier, so predict gives zero-shot)."""
        result.safeguard = decision
        adapter = result.adapter
        adapter.meta["safeguard"] = decision.as_dict()
        if decision.kept == "zero-shot":
            warnings.warn(f"safeguard: {decision.reason}", SafeguardWarning, stacklevel=5)
            result.final_adapted, result.final_metrics = result.final_metrics, result.zero_shot_metrics
            result.predictions = result.zero_shot
            result.adapter = Adapter(image_norms={}, text_norms={}, v_classifier=view.classifier.clone(),
                                     t_classifier=view.classifier, extra_state=adapter.extra_state,
                                     meta={**adapter.meta, "fusion": Fusion().as_dict()})
        else:
            adapter.meta["temperature"] = decision.temperature
            result.predictions = view.predictions((result.logits["combined"] / decision.temperature).softmax(dim=-1))
            result.final_metrics.update({k: v for k, v in result.predictions.metrics().items() if k == "ece"})


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
