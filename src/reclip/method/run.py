"""``ReCLIP``: the main job as one call.

``ReCLIP(model, config).fit(dataset)`` extracts the frozen image features (through the
feature cache), scores zero-shot, then, by ``config.mode``, stops there (``zero-shot``),
runs a training-free transduction (``transductive``: label propagation alone;
``transclip``: TransCLIP-style) or the self-training loop (``reclip``,
``v-only``, ``t-only``), and evaluates the final model. With ``out`` it owns the output
folder: a checkpoint after every epoch, ``resume=True`` to continue one, and the outputs
written atomically at the end. The model is left as it was given (its norm affines are
restored after training); ``result.adapter.apply(model)`` gives the adapted model.
"""
from __future__ import annotations

import contextlib
import resource
import warnings
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import distributed, runtime
from ..callbacks import Callback
from ..data.datasets import ImageDataset
from ..data.prompts import get_templates
from ..errors import ReclipError
from ..features import Features, extract_features
from ..fingerprint import weights_fingerprint
from ..io import output_folder, write_json
from ..metrics import scores_to_probabilities
from ..models.base import DualEncoder
from ..predictions import Predictions
from ..report import plot_report
from .adapter import ADAPTER_FILE, Adapter, adapter_meta, load_into, snapshot
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ReclipConfig
from .propagation import label_propagation
from .reclip import RunState, adapt, branch_accuracies, frozen_posterior
from .safeguard import decide, estimated_gain, head_agreement
from .transclip import transclip
from .zeroshot import class_embeddings, zero_shot_logits

METRICS_FILE = "metrics.json"


class SafeguardWarning(UserWarning):
    """The safeguard kept the zero-shot predictions of a ReCLIP run."""


PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "report.png"


@dataclass
class ReclipResult:
    """What ``ReCLIP.fit`` returns.

    ``predictions`` of the final model and ``zero_shot`` ones (``Predictions``), ``adapter``
    (None for the training-free modes), ``metrics`` (what metrics.json holds: zero-shot and
    final metrics when labels exist, per-epoch records, passes, timings), ``history`` (the
    per-epoch records) and ``title`` (of the report).
    """

    mode: str
    predictions: Predictions
    zero_shot: Predictions
    adapter: Adapter | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""

    def save(self, out: str | Path) -> list[Path]:
        """Write metrics.json, predictions.csv, and for training modes adapter.safetensors and
        report.png into ``out``, each atomically; returns the paths written (none off rank 0)."""
        if not distributed.is_main():
            return []
        out = Path(out)
        written = [out / PREDICTIONS_FILE, out / METRICS_FILE]
        self.predictions.save_csv(written[0])
        if self.adapter is not None:
            written.append(out / ADAPTER_FILE)
            self.adapter.save(written[-1])
        if self.history:
            written.append(out / REPORT_FILE)
            plot_report(written[-1], self.history, self.metrics["zero_shot"], self.metrics["final"], self.title,
                        self.metrics.get("safeguard"))
        write_json(written[1], self.metrics)  # last: its presence means the run finished
        return written


class ReCLIP:
    """Adapts ``model`` to unlabelled target images with the settings of ``config``.

    ``ReCLIP(model)`` uses the default ``ReclipConfig``; keyword arguments build one
    (``ReCLIP(model, mode="transductive")``) or override fields of the given one.
    """

    def __init__(self, model: DualEncoder, config: ReclipConfig | None = None, **settings: Any) -> None:
        if config is not None and settings:
            config = replace(config, **settings)
        self.model = model
        self.config = config if config is not None else ReclipConfig(**settings)

    def fit(self, dataset: ImageDataset, templates: Sequence[str] | None = None, out: str | Path | None = None,
            resume: bool = False, callbacks: Sequence[Callback] = ()) -> ReclipResult:
        """Run the job on the readable images of ``dataset``; see the module docstring.

        ``templates``: prompt templates with ``{}`` (default: the dataset's, else six generic
        ones); ReCLIP-T uses ``config.t_template`` or the first one. ``out``: output folder
        (checkpoints, and the outputs of ``ReclipResult.save``). ``resume``: continue the
        checkpoint in ``out`` (made with the same model, data, class names, templates and
        config; anything else is refused). Raises ``ReclipError`` for anything the user can fix.
        """
        if resume and out is None:
            raise ReclipError("resume=True needs out, the folder holding the checkpoint")
        templates = resolve_templates(dataset, templates, self.config.t_template)
        callbacks = list(callbacks) if distributed.is_main() else []
        folder = output_folder(out) if out is not None and distributed.is_main() else contextlib.nullcontext()
        norms = {**self.model.named_image_norm_parameters(), **self.model.named_text_norm_parameters()}
        pristine = snapshot(norms)
        with folder:
            try:
                config = self.config.for_model(self.model.contrastive)
                result = _Run(self.model, config, dataset, templates, callbacks).execute(
                    Path(out) if out is not None else None, resume)
            finally:
                load_into(norms, pristine, "model")
            if out is not None:
                result.save(out)
        for callback in callbacks:
            callback.on_fit_end(result)
        return result


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

    def __init__(self, model: DualEncoder, config: ReclipConfig, dataset: ImageDataset, templates: list[str],
                 callbacks: list[Callback]) -> None:
        self.model, self.config, self.dataset, self.templates = model, config, dataset, templates
        self.callbacks = callbacks
        self.start = time.perf_counter()

    def execute(self, out: Path | None, resume: bool) -> ReclipResult:
        config = self.config
        torch.manual_seed(config.seed)
        runtime.apply(config.threads, config.workers)
        frozen = extract_features(self.model, self.dataset, batch_size=config.batch_size, workers=config.workers,
                                  use_cache=config.cache)
        if len(frozen.indices) == 0:
            raise ReclipError(f"no readable image in {self.dataset.spec}; every file failed to decode")
        with torch.inference_mode():
            classifier = class_embeddings(self.model, self.dataset.classnames, self.templates).float().cpu()
        zero_shot = self._predictions(frozen, zero_shot_logits(frozen.features, classifier).softmax(dim=-1))
        metrics: dict[str, Any] = {
            "task": "zeroshot" if config.mode == "zero-shot" else "adapt", "mode": config.mode,
            "model": self.model.spec, "pretrained": self.model.pretrained, "dataset": self.dataset.spec,
            "n": len(frozen.indices), "skipped": len(frozen.skipped), "world_size": distributed.world(),
            "config": config.to_dict(), "templates": self.templates,
            "images_per_s": round(len(frozen.indices) / frozen.seconds, 1) if frozen.seconds else None,
            "zero_shot": zero_shot.metrics()}
        adapter, history = None, []
        if config.mode == "zero-shot":
            predictions = zero_shot
            metrics["final"] = metrics["zero_shot"]
        elif config.mode == "transductive":
            predictions = self._transductive(frozen, classifier, metrics)
        elif config.mode == "transclip":
            predictions = self._transclip(frozen, classifier, metrics)
        else:
            predictions, adapter, history = self._self_train(frozen, classifier, zero_shot, out, resume, metrics)
        metrics["seconds"] = round(time.perf_counter() - self.start, 3)
        metrics["peak_memory_mb"] = round(_peak_memory_mb(self.model.device), 1)
        return ReclipResult(config.mode, predictions, zero_shot, adapter, metrics, history,
                            title=f"ReCLIP ({config.mode}) - {self.model.name} on {self.dataset.name}")

    def _predictions(self, frozen: Features, probs: torch.Tensor) -> Predictions:
        return Predictions(frozen.indices, probs, self.dataset.classnames, self.dataset.paths, frozen.labels,
                           frozen.skipped)

    def _transductive(self, frozen: Features, classifier: torch.Tensor, metrics: dict) -> Predictions:
        """Label propagation alone on the frozen features (the ZLaP-style training-free peer)."""
        config = self.config
        lp = label_propagation(frozen.features, classifier, k=config.k, alpha=config.alpha,
                               cut_dim=config.projection_rank(len(classifier)), project=config.project,
                               knn=config.knn, knn_backend=config.knn_backend, image_edges=config.image_edges,
                               device=self.model.device)
        predictions = self._predictions(frozen, scores_to_probabilities(lp.scores))
        metrics["final"] = predictions.metrics()
        metrics["propagation"] = {"k": lp.k, "knn_backend": lp.knn_backend, "knn_recall": lp.knn_recall,
                                  "timings": lp.timings}
        return predictions

    def _transclip(self, frozen: Features, classifier: torch.Tensor, metrics: dict) -> Predictions:
        """TransCLIP-style transduction on the frozen features (training-free peer)."""
        result = transclip(frozen.features, classifier=classifier, knn=self.config.knn, device=self.model.device)
        predictions = self._predictions(frozen, result.probs.float())
        metrics["final"] = predictions.metrics()
        metrics["transclip"] = {"k": result.k, "timings": result.timings}
        return predictions

    def _self_train(self, frozen: Features, classifier: torch.Tensor, zero_shot: Predictions, out: Path | None,
                    resume: bool, metrics: dict) -> tuple[Predictions, Adapter, list[dict]]:
        model, config, dataset = self.model, self.config, self.dataset
        identity = {"model": model.spec, "pretrained": model.pretrained, "weights": weights_fingerprint(model),
                    "dataset": dataset.fingerprint(), "n": len(frozen.indices), "classnames": dataset.classnames,
                    "templates": self.templates, "config": config.to_dict()}
        resumed = load_checkpoint(out, model, identity) if resume else None
        state, optimizer_state = resumed if resumed is not None else (None, None)
        epochs = config.num_epochs(len(frozen.indices))
        for callback in self.callbacks:
            callback.on_fit_start({"n": len(frozen.indices), "epochs": epochs, "resumed": resume,
                                   "resumed_epoch": state.epoch if state is not None else 0})

        def on_epoch_end(state: RunState, optimizers: dict) -> None:
            if out is not None and distributed.is_main():
                save_checkpoint(out, model, state, optimizers, identity)
            for callback in self.callbacks:
                callback.on_epoch_end(state.history[-1], epochs)

        # the safeguard's judge: label propagation on the frozen model, which training cannot bend
        posterior = (frozen_posterior(config, frozen.features, classifier, model.device)
                     if config.mode == "reclip" else None)
        state, f_v, logits = adapt(model, dataset, frozen, self.templates, config, state,
                                   on_epoch_end=on_epoch_end, optimizer_state=optimizer_state, posterior=posterior)
        heads = state.heads
        adapted = self._predictions(frozen, logits.softmax(dim=-1))
        final = adapted.metrics()
        if final:
            final.update({k: v for k, v in branch_accuracies(frozen.features, f_v, heads, frozen.labels,
                                                             logits).items() if k != "top1"})
        meta = adapter_meta(model, dataset.classnames, self.templates, config.mode, config.to_dict())
        adapter = Adapter(
            image_norms=snapshot(model.named_image_norm_parameters()) if config.trains_v else {},
            text_norms=snapshot(model.named_text_norm_parameters()) if config.trains_t else {},
            v_classifier=heads.v_classifier, t_classifier=heads.t_classifier, extra_state=model.extra_state(),
            meta=meta)
        predictions = adapted
        if config.mode == "reclip":
            agreement = head_agreement(frozen.features, f_v, heads.t_classifier, heads.v_classifier)
            gain = estimated_gain(posterior, logits.argmax(dim=-1), zero_shot.pred)
            target = posterior.max(dim=-1).values.mean().item() if config.calibrate else None
            decision = decide(logits, agreement, config.safeguard, gain, config.safeguard_gain, target)
            metrics["safeguard"] = decision.as_dict()
            meta["safeguard"] = decision.as_dict()
            if decision.kept == "zero-shot":
                warnings.warn(f"safeguard: {decision.reason}", SafeguardWarning, stacklevel=4)
                metrics["final_adapted"] = final
                final = zero_shot.metrics()
                predictions = zero_shot
                # the zero-shot classifier as both heads and no trained norm: predict gives zero-shot
                adapter = Adapter(image_norms={}, text_norms={}, v_classifier=classifier.clone(),
                                  t_classifier=classifier, extra_state=model.extra_state(), meta=meta)
            else:
                meta["temperature"] = decision.temperature
                predictions = self._predictions(frozen, (logits / decision.temperature).softmax(dim=-1))
                final.update({k: v for k, v in predictions.metrics().items() if k == "ece"})
        frozen_pass = 0.0 if frozen.from_cache else 1.0
        metrics.update({"epochs": state.history, "final": final,
                        "passes": {"image_forward": state.passes_forward + frozen_pass,
                                   "image_backward": state.passes_backward}})
        return predictions, adapter, state.history


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
