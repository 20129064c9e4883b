"""A ReCLIP adapter: only what adaptation changed, in one safetensors file.

It holds V's image-tower norm affines and BatchNorm running statistics, T's text-tower norm affines, V's centroid classifier
(C x D), T's first-template class embeddings (C x D), any model state fitted on the target
(the bridge's centring vector) and, as JSON metadata, the model spec, class names,
templates, config, the heads' fusion (its rule and per-head temperatures, so predict fuses
them as the run did) and reclip version. Loading never unpickles anything.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import __version__, checks
from ..data.datasets import ImageDataset
from ..data.prompts import normalize_name
from ..errors import ReclipError
from ..features import default_workers, encode_dataset
from ..io import atomic_path
from ..models.base import DualEncoder
from ..precision import autocast
from ..predictions import Predictions
from .config import FUSION_RULES, TRAINING_MODES
from .heads import Fusion, combined_logits
from .weights import image_norms, load_into, read_safetensors

ADAPTER_FILE = "adapter.safetensors"


@dataclass
class Adapter:
    """The trained state of a ReCLIP run. ``Adapter.load(path).apply(model)`` reuses it."""

    image_norms: dict[str, torch.Tensor]   # V's affines and BatchNorm statistics, empty when V's tower is frozen
    text_norms: dict[str, torch.Tensor]    # T's, empty for v-only
    v_classifier: torch.Tensor             # C x D
    t_classifier: torch.Tensor             # C x D
    extra_state: dict[str, torch.Tensor]
    meta: dict

    @property
    def classnames(self) -> list[list[str]]:
        return self.meta["classnames"]

    @property
    def mode(self) -> str:
        return self.meta["mode"]

    @property
    def fusion(self) -> Fusion:
        """How the run fused its heads (``heads.Fusion``; the paper's average when not recorded)."""
        return Fusion(**self.meta.get("fusion", {}))

    @property
    def temperature(self) -> float:
        """The label-free calibration temperature of the run (1 when it had none)."""
        return float(self.meta.get("temperature", 1.0))

    def save(self, path: str | Path) -> None:
        tensors = {f"norm.{k}": v for k, v in {**self.image_norms, **self.text_norms}.items()}
        tensors["head.v_classifier"] = self.v_classifier
        tensors["head.t_classifier"] = self.t_classifier
        tensors.update({f"extra.{k}": v for k, v in self.extra_state.items()})
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"reclip": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: str | Path) -> "Adapter":
        """Load from an adapter file or from the output folder of ``reclip adapt``."""
        path = checks.path_argument(path, "path")
        if path.is_dir():
            path = path / ADAPTER_FILE
        if not path.is_file():
            raise ReclipError(f"adapter {path} does not exist; pass the --out folder of a finished "
                              "`reclip adapt` run or its adapter.safetensors")
        meta, tensors = read_safetensors(path, "adapter", "pass the adapter.safetensors written by `reclip adapt`")
        _check_adapter(path, meta, tensors)
        pick = lambda prefix: {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        norms = pick("norm.")
        return cls(image_norms={k: v for k, v in norms.items() if k.startswith("image.")},
                   text_norms={k: v for k, v in norms.items() if k.startswith("text.")},
                   v_classifier=tensors["head.v_classifier"].float(), t_classifier=tensors["head.t_classifier"].float(),
                   extra_state=pick("extra."), meta=meta)

    def apply(self, model: DualEncoder) -> "AdaptedModel":
        """Load T's text norms and the target statistics into ``model``; V's image norms are
        swapped in per batch, since the combined head also needs the frozen image tower."""
        checks.adapter_fits(self, model)
        load_into(model.named_text_norm_parameters(), self.text_norms, "adapter")
        model.load_extra_state(self.extra_state)
        return AdaptedModel(model, self)


class AdaptedModel:
    """A base model plus an adapter: classifies images with the adapted (combined) head."""

    def __init__(self, model: DualEncoder, adapter: Adapter) -> None:
        self.model = model
        self.adapter = adapter
        mismatch = set(adapter.image_norms) - set(model.named_image_norm_state())
        if mismatch:
            raise ReclipError(f"adapter does not fit model {model.name} ({len(mismatch)} unknown image "
                              "parameters); pass the --model/--pretrained it was made with")

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x C x H x W -> (frozen-tower B x D, V-tower B x D) features, on CPU."""
        frozen = self.model.encode_image(images).cpu()
        if not self.adapter.image_norms:
            return frozen, frozen
        # V ran in this precision when adapt evaluated it last
        with image_norms(self.model, self.adapter.image_norms), autocast(self.model.device):
            return frozen, self.model.encode_image(images).cpu()

    def logits(self, f_frozen: torch.Tensor, f_v: torch.Tensor) -> torch.Tensor:
        """N x C logits of the adapter's head (fused as the run fused them for ReCLIP, one branch
        otherwise), divided by the run's calibration temperature."""
        a = self.adapter
        return combined_logits(f_frozen, f_v, a.t_classifier, a.v_classifier, a.mode, a.fusion) / a.temperature

    def predict(self, dataset: ImageDataset, batch_size: int = 64, workers: int | None = None) -> Predictions:
        """Classify the readable images of ``dataset`` into the adapter's classes.

        One pass: each batch goes through the frozen image tower and through V's. The
        dataset's labels (if any) are mapped to the adapter's classes by name, so its class
        list may be in any order or a subset; a class the adapter does not know is refused.
        """
        checks.dataset_argument(dataset)
        batch_size = checks.whole_number(batch_size, "batch_size", minimum=1)
        workers = None if workers is None else checks.whole_number(workers, "workers", minimum=0)
        labels = self._labels_of(dataset)
        both = encode_dataset(lambda images: torch.cat(self.encode(images), dim=1), self.model.device, dataset,
                              list(range(len(dataset))), batch_size=batch_size,
                              workers=default_workers() if workers is None else workers, desc="predict")
        if len(both.indices) == 0:
            raise ReclipError(f"no readable image in {dataset.spec}; every file failed to decode")
        f_frozen, f_v = both.features.chunk(2, dim=1)
        probs = self.logits(f_frozen, f_v).softmax(dim=-1)
        return Predictions(both.indices, probs, self.adapter.classnames, dataset.paths, labels[both.indices],
                           both.skipped)

    def _labels_of(self, dataset: ImageDataset) -> torch.Tensor:
        """(len(dataset),) labels as indices into the adapter's classes (-1 where unknown)."""
        ours = {normalize_name(n): c for c, names in enumerate(self.adapter.classnames) for n in names}
        mapping = []
        for names in dataset.classnames:
            found = next((ours[normalize_name(n)] for n in names if normalize_name(n) in ours), None)
            if found is None:
                raise ReclipError(f"class '{names[0]}' of {dataset.spec} is not one of the adapter's "
                                  f"{len(self.adapter.classnames)} classes; pass data of the adapter's classes "
                                  "(or its --classnames)")
            mapping.append(found)
        labels = torch.as_tensor(dataset.labels, dtype=torch.long)
        mapped = torch.tensor(mapping + [-1], dtype=torch.long)[labels.clamp(min=-1)]  # -1 picks the last entry
        return torch.where(labels >= 0, mapped, labels)


def adapter_meta(model: DualEncoder, classnames: list[list[str]], templates: list[str], mode: str,
                 config: dict) -> dict:
    return {"model": model.spec, "pretrained": model.pretrained, "classnames": classnames,
            "templates": templates, "mode": mode, "config": config, "reclip_version": __version__}


ADAPTER_KEYS = {"model": str, "classnames": list, "templates": list, "mode": str}


def _check_adapter(path: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse hand-edited or foreign adapters with one line naming what is wrong."""
    fix = "re-create it with `reclip adapt`"
    for key, kind in ADAPTER_KEYS.items():
        if not isinstance(meta.get(key), kind):
            raise ReclipError(f"adapter {path}: metadata '{key}' is missing or not a {kind.__name__}; {fix}")
    if meta["mode"] not in TRAINING_MODES:
        raise ReclipError(f"adapter {path}: mode '{meta['mode']}' is not a training mode; {fix}")
    names = meta["classnames"]
    if not names or not all(isinstance(c, list) and c and all(isinstance(n, str) for n in c) for c in names):
        raise ReclipError(f"adapter {path}: metadata 'classnames' must be a list of lists of names; {fix}")
    for head in ("head.v_classifier", "head.t_classifier"):
        t = tensors.get(head)
        if t is None or t.ndim != 2 or len(t) != len(names) or not t.is_floating_point():
            shape = None if t is None else tuple(t.shape)
            raise ReclipError(f"adapter {path}: {head} has shape {shape} and dtype "
                              f"{None if t is None else t.dtype}, expected {len(names)} x D floats; {fix}")
        if not bool(t.isfinite().all()):
            raise ReclipError(f"adapter {path}: {head} holds non-finite values; {fix}")
    _check_fusion(path, meta.get("fusion", {}), fix)
    temperature = meta.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ReclipError(f"adapter {path}: metadata 'temperature' must be a positive number; {fix}")
    dims = {tensors["head.v_classifier"].shape[1], tensors["head.t_classifier"].shape[1]}
    if len(dims) != 1:
        raise ReclipError(f"adapter {path}: the two heads have different widths {sorted(dims)}; {fix}")


def _check_fusion(path: Path, fusion: object, fix: str) -> None:
    """Refuse an adapter whose recorded head fusion is not a known rule with positive temperatures."""
    rules = FUSION_RULES
    if not isinstance(fusion, dict) or set(fusion) - {"rule", "temperature_t", "temperature_v"} \
            or fusion.get("rule", "average") not in rules:
        raise ReclipError(f"adapter {path}: metadata 'fusion' must name a rule ({', '.join(rules)}) and the "
                          f"heads' temperatures; {fix}")
    for key in ("temperature_t", "temperature_v"):
        value = fusion.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ReclipError(f"adapter {path}: metadata 'fusion' {key} must be a positive number; {fix}")
