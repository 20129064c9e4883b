"""Where reclip keeps things on disk, in one place.

- ``cache_root()``: ``$RECLIP_CACHE`` or ``~/.cache/reclip``. Below it: ``features/`` (image
  features keyed by model content, dataset, transform and model state; about N x D x 4 bytes
  per entry) and ``bridge/`` (the bridge model's fitted map, 2 MB).
- ``pixel_cache_dir()``: the decode-once pixel cache of ReCLIP-V's passes, a temporary file
  of N x 3 x H x W bytes (150 KB per image at 224 px: 1.5 GB for 10,000 images) in the
  system temporary folder (``$TMPDIR``, else /tmp), deleted when the run ends.
- ``data_home()``: ``$RECLIP_DATA`` or ``~/.cache/reclip/datasets``: one folder per benchmark,
  where benchmarks are read from (and downloaded to, when online), and where generated
  targets are written.
- ``system_data_roots(name)``: folders where a distribution installs a benchmark (Debian's
  ``dataset-fashion-mnist`` puts Fashion-MNIST in /usr/share/datasets/fashion-mnist), looked
  at when the data home has no copy. ``$RECLIP_SYSTEM_DATA`` replaces /usr/share/datasets.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE_ENV = "RECLIP_CACHE"
DATA_ENV = "RECLIP_DATA"
SYSTEM_DATA_ENV = "RECLIP_SYSTEM_DATA"
SYSTEM_DATA = "/usr/share/datasets"
# benchmark -> folder below the system data root (and the Debian package that installs it)
SYSTEM_DATASETS: dict[str, tuple[str, str]] = {
    "fashion_mnist": ("fashion-mnist", "dataset-fashion-mnist"),
}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reclip").expanduser()


def feature_cache_dir() -> Path:
    return cache_root() / "features"


def bridge_cache_dir() -> Path:
    return cache_root() / "bridge"


def pixel_cache_dir() -> Path:
    return Path(tempfile.gettempdir())


def data_home() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "reclip" / "datasets").expanduser()


def system_data_roots(name: str) -> tuple[Path, ...]:
    """Distribution-installed folders of benchmark ``name`` (registry name), existing or not."""
    if name not in SYSTEM_DATASETS:
        return ()
    return (Path(os.environ.get(SYSTEM_DATA_ENV) or SYSTEM_DATA) / SYSTEM_DATASETS[name][0],)


def system_package(name: str) -> str | None:
    """The Debian package that installs benchmark ``name``, if any."""
    return SYSTEM_DATASETS[name][1] if name in SYSTEM_DATASETS else None
