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


def test_cifar10_templates_are_the_authors():
    templates = get_templates("cifar10")
    assert len(templates) == 18 and templates[0] == "a photo of a {}."
    assert all("{}" in t and "{c}" not in t for t in templates)


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("eurosat", 10, "annual crop land"),
        ("mnist", 10, "0"),
        ("oxford_pets", 37, "Abyssinian"),
        ("oxford-pets", 37, "Abyssinian"),
        ("Flowers102", 102, "pink primrose"),
        ("caltech101", 101, "human face"),
        ("cifar10", 10, "airplane"),
        ("fashion-mnist", 10, "T-shirt/top"),
    ],
)
def test_benchmark_class_names(name, count, first):
    names = get_classnames(name)
    assert len(names) == count and names[0] == [first]
    assert all(isinstance(c, list) and c and all(isinstance(s, str) for s in c) for c in names)


def test_fer2013_synonyms():
    names = get_classnames("fer2013")
    assert names[3] == ["happy", "smiling"] and names[5] == ["surprised", "shocked", "spooked"]


def test_imagenet_puts_the_authors_first_template_before_open_clips_list():
    """The names are open_clip's; the templates are 'a photo of a {}.' then open_clip's 80 (the authors' 81)."""
    assert [c[0] for c in get_classnames("imagenet")] == list(open_clip.IMAGENET_CLASSNAMES)
    templates = get_templates("imagenet1k")
    assert templates[0] == "a photo of a {}." and templates[1:] == [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def test_resisc45_has_the_authors_18_templates():
    templates = get_templates("resisc45")
    assert len(templates) == 18 and templates[0] == "satellite imagery of {}." and len(set(templates)) == 18


def test_default_templates():
    assert get_templates(None) == DEFAULT_TEMPLATES and 4 <= len(DEFAULT_TEMPLATES) <= 8
    assert DEFAULT_TEMPLATES[0] == "a photo of a {}."
    assert all("{}" in t for t in DEFAULT_TEMPLATES)
    assert benchmark_templates("fashion_mnist") is None
    assert get_templates("fashion_mnist") == DEFAULT_TEMPLATES


def test_unknown_names_have_no_prompts():
    assert get_classnames("not-a-benchmark") is None and benchmark_templates("not-a-benchmark") is None


def test_shipped_lists_are_copies():
    get_classnames("cifar10")[0].append("plane")
    get_templates("cifar10").clear()
    assert get_classnames("cifar10")[0] == ["airplane"] and len(get_templates("cifar10")) == 18


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
