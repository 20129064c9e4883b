"""Tests for class names and prompt templates."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest

from reclip import ReclipError
from reclip.data.prompts import (
    DEFAULT_TEMPLATES,
    benchmark_templates,
    get_classnames,
    get_templates,
    read_classnames,
    read_templates,
)


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cifar10_templates_come_from_clip_benchmark():
    templates = get_templates("cifar10")
    assert len(templates) == 18 and templates[0] == "a photo of a {}."
    assert all("{}" in t and "{c}" not in t for t in templates)


def test_cifar10_class_names_are_not_shipped():
    """clip_benchmark ships no CIFAR-10 names: they come from the downloaded dataset."""
    assert get_classnames("cifar10") is None


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("eurosat", 10, "annual crop land"),
        ("mnist", 10, "0"),
        ("pets", 37, "Abyssinian"),
        ("oxford-pets", 37, "Abyssinian"),
        ("Flowers102", 102, "pink primrose"),
        ("caltech101", 102, "background"),
        ("fashion-mnist", 10, "T-shirt/top"),
    ],
)
def test_benchmark_class_names(name, count, first):
    names = get_classnames(name)
    assert len(names) == count and names[0] == [first]
    assert all(isinstance(c, list) and c and all(isinstance(s, str) for s in c) for c in names)


def test_imagenet_names_and_templates_match_open_clip():
    assert [c[0] for c in get_classnames("imagenet")] == list(open_clip.IMAGENET_CLASSNAMES)
    assert get_templates("imagenet1k") == [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def test_default_templates():
    assert get_templates(None) == DEFAULT_TEMPLATES and 4 <= len(DEFAULT_TEMPLATES) <= 8
    assert all("{}" in t for t in DEFAULT_TEMPLATES)
    assert benchmark_templates("fashion_mnist") is None
    assert get_templates("fashion_mnist") == DEFAULT_TEMPLATES


def test_unknown_names_have_no_prompts():
    assert get_classnames("not-a-benchmark") is None and benchmark_templates("not-a-benchmark") is None


def test_read_classnames_with_synonyms_comments_and_blank_lines(tmp_path):
    path = write_lines(tmp_path / "names.txt", "# my classes", "", "  cat | kitty  ", "dog", "  ", "sea_lion|seal")
    assert read_classnames(path) == [["cat", "kitty"], ["dog"], ["sea_lion", "seal"]]


def test_read_classnames_errors(tmp_path):
    with pytest.raises(ReclipError, match="lists no classes"):
        read_classnames(write_lines(tmp_path / "empty.txt", "# only a comment"))
    with pytest.raises(ReclipError, match="does not exist"):
        read_classnames(tmp_path / "missing.txt")
    with pytest.raises(ReclipError, match=r"names 'Cat' twice \(lines 1 and 3\)"):
        read_classnames(write_lines(tmp_path / "twice.txt", "cat", "dog", "Cat|kitty"))


def test_read_templates(tmp_path):
    path = write_lines(tmp_path / "templates.txt", "# prompts", "a photo of a {}.", "", "art of the {c}.")
    assert read_templates(path) == ["a photo of a {}.", "art of the {}."]


def test_read_templates_errors(tmp_path):
    with pytest.raises(ReclipError, match=r"line 2 has no \{\} for the class name"):
        read_templates(write_lines(tmp_path / "bad.txt", "a photo of a {}.", "a photo"))
    with pytest.raises(ReclipError, match="has no templates"):
        read_templates(write_lines(tmp_path / "empty.txt", ""))
