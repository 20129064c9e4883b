"""Class names and prompt templates.

Benchmark class names and templates come from the lists shipped with clip_benchmark
(``en_classnames.json``, ``en_zeroshot_classification_templates.json``); a benchmark
without a shipped list of names falls back to its torchvision class list where that is
known without the data (Fashion-MNIST), else the names come from the dataset itself.

A class is a list of synonyms whose first entry is the display name. A template is a
string with ``{}`` where the class name goes (``template.replace("{}", name)``).
"""
from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from reclip.errors import ReclipError

DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
]

PLACEHOLDER = "{}"
_CLIP_BENCHMARK_PLACEHOLDER = "{c}"

# Our benchmark names whose clip_benchmark key is spelled differently (after normalize_name).
_CLIP_BENCHMARK_KEYS: dict[str, str] = {
    "oxfordpets": "pets",
    "flowers102": "flowers",
    "stanfordcars": "cars",
    "imagenet": "imagenet1k",
}
# Benchmarks without a shipped class list whose torchvision class defines ``classes``.
_TORCHVISION_CLASSES: dict[str, str] = {
    "fashionmnist": "FashionMNIST",
}


def normalize_name(name: str) -> str:
    """Lower-case a dataset name and drop '-', '_' and spaces: 'Fashion-MNIST' -> 'fashionmnist'."""
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def get_classnames(name: str) -> list[list[str]] | None:
    """The class names of a benchmark (each a list of synonyms), or None when not known offline."""
    key = normalize_name(name)
    shipped = _lookup(_clip_benchmark_json("en_classnames.json"), key)
    if shipped is not None:
        return [_as_synonyms(entry) for entry in shipped]
    if key in _TORCHVISION_CLASSES:
        import torchvision.datasets

        return [[n] for n in getattr(torchvision.datasets, _TORCHVISION_CLASSES[key]).classes]
    return None


def benchmark_templates(name: str) -> list[str] | None:
    """The templates clip_benchmark ships for a benchmark (with ``{}``), or None."""
    shipped = _lookup(_clip_benchmark_json("en_zeroshot_classification_templates.json"), normalize_name(name))
    if shipped is None:
        return None
    return [t.replace(_CLIP_BENCHMARK_PLACEHOLDER, PLACEHOLDER) for t in shipped]


def get_templates(name: str | None) -> list[str]:
    """The benchmark's shipped templates, or ``DEFAULT_TEMPLATES`` (name None or nothing shipped)."""
    shipped = benchmark_templates(name) if name is not None else None
    return shipped if shipped is not None else list(DEFAULT_TEMPLATES)


def read_classnames(path: str | os.PathLike[str]) -> list[list[str]]:
    """Read a class-names file: one class per line, synonyms separated by ``|``.

    Blank lines and lines starting with ``#`` are skipped. Raises ``ReclipError`` when the
    file is missing, empty or names a class twice.
    """
    classes: list[list[str]] = []
    first_line: dict[str, int] = {}
    for number, line in _read_lines(path, "class-names"):
        synonyms = [s.strip() for s in line.split("|") if s.strip()]
        if not synonyms:
            raise ReclipError(f"class-names file {path} line {number} has no name; write e.g. 'cat|kitty'")
        first = first_line.setdefault(synonyms[0].casefold(), number)
        if first != number:
            raise ReclipError(
                f"class-names file {path} names '{synonyms[0]}' twice (lines {first} and {number}); "
                "keep one line per class"
            )
        classes.append(synonyms)
    if not classes:
        raise ReclipError(f"class-names file {path} lists no classes; write one class name per line")
    return classes


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


def _lookup(table: dict[str, Any], key: str) -> Any:
    """``table``'s entry for a normalised benchmark name, or None."""
    key = _CLIP_BENCHMARK_KEYS.get(key, key)
    return next((value for name, value in table.items() if normalize_name(name) == key), None)


def _as_synonyms(entry: str | list[str]) -> list[str]:
    """A shipped class entry (a name or a list of names) as a list of synonyms."""
    return [entry] if isinstance(entry, str) else list(entry)


@cache
def _clip_benchmark_json(filename: str) -> dict[str, Any]:
    """A JSON resource shipped in ``clip_benchmark.datasets``."""
    return json.loads(resources.files("clip_benchmark.datasets").joinpath(filename).read_text(encoding="utf-8"))
