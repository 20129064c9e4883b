"""Class names and prompt templates.

Each benchmark of the ReCLIP paper ships ``resources/<benchmark>.json`` with the lists
that reproduce the authors' protocol: ``classes`` (label order; synonyms as
``"happy|smiling"``, display name first), ``templates`` (the authors' first template
first: ReCLIP-T trains and classifies with it), optionally ``folders`` (the class folder
names of the dataset's distribution, in label order) and ``source`` (where the lists come
from, and their license). A benchmark without a file (Fashion-MNIST) takes torchvision's
class list and ``DEFAULT_TEMPLATES``.

A class is a list of synonyms whose first entry is the display name. A template is a
string with ``{}`` where the class name goes (``template.replace("{}", name)``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from reclip.data.images import name_key
from reclip.errors import ArgumentError, ReclipError

# The generic list, for targets that are no benchmark; its first template is the one
# ReCLIP-T trains with, as in the authors' lists.
DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
]

PLACEHOLDER = "{}"
SYNONYM_SEPARATOR = "|"
_CLIP_BENCHMARK_PLACEHOLDER = "{c}"
_RESOURCE_FOLDER = "resources"

# Other spellings of benchmark names: clip_benchmark's, and the authors' keys.
# Case, '-', '_' and spaces never matter.
ALIASES: dict[str, str] = {
    "pets": "oxford_pets",
    "oxford_iiit_pet": "oxford_pets",
    "flowers": "flowers102",
    "cars": "stanford_cars",
    "standford_cars": "stanford_cars",
    "fgvc": "fgvc_aircraft",
    "imagenet1k": "imagenet",
    "rendered_sst2": "renderedsst2",
}

# Benchmarks without a resource file whose torchvision class defines ``classes``.
_TORCHVISION_CLASSES: dict[str, str] = {
    "fashionmnist": "FashionMNIST",
}


@dataclass(frozen=True)
class BenchmarkPrompts:
    """The shipped lists of one benchmark (read once and shared, hence tuples).

    ``classnames``: the synonyms of each class, in label order; ``templates``: the prompt
    templates, the one ReCLIP-T uses first; ``folders``: the distribution's class folder
    names in label order, or None; ``source``: the credit line of the lists.
    """

    classnames: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    folders: tuple[str, ...] | None
    source: str


def normalize_name(name: str) -> str:
    """Lower-case a dataset name and drop '-', '_' and spaces: 'Fashion-MNIST' -> 'fashionmnist'."""
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def shipped_benchmarks() -> list[str]:
    """The names of the benchmarks with a resource file (the 22 of the ReCLIP paper), sorted."""
    return sorted(filename[: -len(".json")] for filename in _resource_files().values())


def benchmark_prompts(name: str) -> BenchmarkPrompts | None:
    """The shipped class names, templates and folder names of a benchmark, or None (no file)."""
    file = _resource_files().get(_key(name))
    return None if file is None else _read_resource(file)


def get_classnames(name: str) -> list[list[str]] | None:
    """The class names of a benchmark (each a list of synonyms), or None when not known offline."""
    shipped = benchmark_prompts(name)
    if shipped is not None:
        return [list(synonyms) for synonyms in shipped.classnames]
    key = _key(name)
    if key in _TORCHVISION_CLASSES:
        import torchvision.datasets

        return [[n] for n in getattr(torchvision.datasets, _TORCHVISION_CLASSES[key]).classes]
    return None


def benchmark_templates(name: str) -> list[str] | None:
    """The templates shipped for a benchmark (with ``{}``, the authors' first template first), or None."""
    shipped = benchmark_prompts(name)
    return None if shipped is None else list(shipped.templates)


def get_templates(name: str | None) -> list[str]:
    """The benchmark's shipped templates, or ``DEFAULT_TEMPLATES`` (name None or nothing shipped)."""
    shipped = benchmark_templates(name) if name is not None else None
    return shipped if shipped is not None else list(DEFAULT_TEMPLATES)


def split_synonyms(entry: str) -> list[str]:
    """``"happy | smiling"`` -> ``["happy", "smiling"]`` (blank parts dropped)."""
    return [s.strip() for s in entry.split(SYNONYM_SEPARATOR) if s.strip()]


def read_classnames(path: str | os.PathLike[str]) -> list[list[str]]:
    """Read a class-names file: one class per line, synonyms separated by ``|``.

    Blank lines and lines starting with ``#`` are skipped. Raises ``ReclipError`` when the
    file is missing, empty or names a class twice.
    """
    classes: list[list[str]] = []
    first_line: dict[str, int] = {}
    for number, line in _read_lines(path, "class-names"):
        synonyms = split_synonyms(line)
        if not synonyms:
            raise ReclipError(f"class-names file {path} line {number} has no name; write e.g. 'cat|kitty'")
        first = first_line.setdefault(name_key(synonyms[0]), number)
        if first != number:
            raise ReclipError(
                f"class-names file {path} names '{synonyms[0]}' twice (lines {first} and {number}), ignoring "
                "case, '_' and spaces; keep one line per class"
            )
        classes.append(synonyms)
    if not classes:
        raise ReclipError(f"class-names file {path} lists no classes; write one class name per line")
    return classes


def check_classnames(classes: object, name: str = "classnames") -> list[list[str]]:
    """Class names given as a list, checked as a class-names file is: each entry a name or a
    non-empty list of synonyms (strings, not blank), no two classes with one display name (case,
    '_' and spaces do not count). Returns them as lists of stripped synonyms."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ArgumentError(name, f"must be a list of class names (or a class-names file); got {type(classes).__name__}")
    if not classes:
        raise ArgumentError(name, "is empty; give one name (or list of synonyms) per class")
    checked: list[list[str]] = []
    first: dict[str, int] = {}
    for i, entry in enumerate(classes):
        synonyms = [entry] if isinstance(entry, str) else entry
        if isinstance(synonyms, (bytes, str)) or not isinstance(synonyms, Sequence) or not synonyms or \
                not all(isinstance(s, str) and s.strip() for s in synonyms):
            raise ArgumentError(name, f"entry {i} must be a class name or a list of synonyms (non-blank strings); "
                                      f"got {entry!r}")
        synonyms = [s.strip() for s in synonyms]
        earlier = first.setdefault(name_key(synonyms[0]), i)
        if earlier != i:
            raise ArgumentError(name, f"names '{synonyms[0]}' twice (entries {earlier} and {i}), ignoring case, "
                                      "'_' and spaces; give each class once")
        checked.append(synonyms)
    return checked


def read_templates(path: str | os.PathLike[str]) -> list[str]:
    """Read a template file: one template per line, each containing ``{}`` (``{c}`` is accepted).

    Blank lines and ``#`` comments are skipped. Raises ``ReclipError`` when the file is
    missing or empty or a template has no placeholder.
    """
    templates = []
    for number, line in _read_lines(path, "template"):
        template = line.replace(_CLIP_BENCHMARK_PLACEHOLDER, PLACEHOLDER)
        if PLACEHOLDER not in template:
            raise ReclipError(
                f"template file {path} line {number} has no {{}} for the class name: '{template}'; "
                "write e.g. 'a photo of a {}.'"
            )
        templates.append(template)
    if not templates:
        raise ReclipError(f"template file {path} has no templates; write one per line, e.g. 'a photo of a {{}}.'")
    return templates


def _read_lines(path: str | os.PathLike[str], kind: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank, non-comment lines of a text file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReclipError(f"{kind} file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReclipError(f"cannot read {kind} file {path} ({exc}); pass a UTF-8 text file") from exc
    numbered = ((n, line.strip()) for n, line in enumerate(text.splitlines(), start=1))
    return [(n, line) for n, line in numbered if line and not line.startswith("#")]


def _key(name: str) -> str:
    """The normalised name of a benchmark, aliases resolved: 'Pets' -> 'oxfordpets'."""
    key = normalize_name(name)
    return next((normalize_name(v) for k, v in ALIASES.items() if normalize_name(k) == key), key)


@cache
def _resource_files() -> dict[str, str]:
    """Normalised benchmark name -> resource file name, for every shipped resource file."""
    folder = resources.files("reclip.data").joinpath(_RESOURCE_FOLDER)
    return {normalize_name(f.name[: -len(".json")]): f.name for f in folder.iterdir() if f.name.endswith(".json")}


@cache
def _read_resource(filename: str) -> BenchmarkPrompts:
    """Parse and check one resource file (a broken file is a packaging bug: ValueError)."""
    text = resources.files("reclip.data").joinpath(_RESOURCE_FOLDER, filename).read_text(encoding="utf-8")
    data = json.loads(text)
    classnames = tuple(tuple(split_synonyms(entry)) for entry in data["classes"])
    templates = tuple(data["templates"])
    folders = None if data.get("folders") is None else tuple(data["folders"])
    if not classnames or not all(classnames) or not templates:
        raise ValueError(f"{filename}: empty class or template list")
    if not all(PLACEHOLDER in t for t in templates):
        raise ValueError(f"{filename}: a template lacks {PLACEHOLDER}")
    if folders is not None and len(folders) != len(classnames):
        raise ValueError(f"{filename}: {len(folders)} folders for {len(classnames)} classes")
    return BenchmarkPrompts(classnames, templates, folders, str(data["source"]))
