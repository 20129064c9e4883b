"""Reliability, round 3 (issue 28): the Python API, CSV input and outputs that never destroy inputs.

Every refusal is one line naming the argument, file or line, exit code 2 on the command line
(run in-process through ``cli.main.main``) or a ``ReclipError`` in the API, and leaves every
input file as it was.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import reclip
from reclip.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import make_clustered_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_cache")


# --- helpers ----------------------------------------------------------------------------

def tree(*roots: Path) -> dict[str, bytes]:
    """Every file below ``roots`` (or the file itself) with its content: what must not change."""
    found = {}
    for root in roots:
        files = [root] if root.is_file() else [p for p in sorted(root.rglob("*")) if p.is_file()]
        found.update({str(p): p.read_bytes() for p in files})
    return found


def one_line(text: str) -> str:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must exit with 2 and print one line."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    return one_line(capsys.readouterr().err)


def api_error(call, *args, **kwargs) -> str:
    with pytest.raises(reclip.ReclipError) as info:
        call(*args, **kwargs)
    return one_line(str(info.value))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 1-epoch run on the tiny model: (its output folder, the dataset folder)."""
    root = tmp_path_factory.mktemp("base")
    model = reclip.load_model("tiny", device="cpu")
    data = make_clustered_folder(root / "images", model, classes=3, per_class=8)
    cache = os.environ.get("RECLIP_CACHE")
    os.environ["RECLIP_CACHE"] = str(root / "cache")
    try:
        reclip.ReCLIP(model, epochs=1, k=5, workers=0).fit(
            reclip.load_dataset(str(data), transform=model.preprocess), out=root / "out")
    finally:
        os.environ.pop("RECLIP_CACHE") if cache is None else os.environ.__setitem__("RECLIP_CACHE", cache)
    return root / "out", data


@pytest.fixture(scope="module")
def tiny():
    return reclip.load_model("tiny", device="cpu")


def image_list(data: Path, table: Path, label=lambda path: path.parent.name) -> Path:
    """A CSV of ``path,label`` rows for the images below ``data``."""
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        for image in sorted(data.rglob("*.png")):
            writer.writerow([str(image), label(image)])
    return table


# --- data loss --------------------------------------------------------------------------

def test_predict_never_writes_over_its_input_list(base, tmp_path, capsys):
    out, data = base
    table = image_list(data, tmp_path / "list.csv")
    before = tree(table, out)
    err = cli_error(capsys, "predict", "--adapter", str(out), "--dataset", str(table), "--out", str(table),
                    "--workers", "0")
    assert "--out" in err and str(table) in err and "--dataset" in err
    assert tree(table, out) == before


@pytest.mark.parametrize("target", ["adapter.safetensors", "folder adapter"])
def test_predict_never_writes_over_its_adapter(base, tmp_path, capsys, target):
    out, data = base
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = tree(copy)
    destination = copy / "adapter.safetensors"
    adapter = str(copy) if target == "folder adapter" else str(destination)
    err = cli_error(capsys, "predict", "--adapter", adapter, "--dataset", str(data), "--out", str(destination))
    assert "--adapter" in err
    assert tree(copy) == before


def test_predict_never_replaces_a_file_it_did_not_write(base, tmp_path, capsys):
    out, data = base
    mine = tmp_path / "notes.csv"
    mine.write_text("my,own\nnotes,here\n")
    err = cli_error(capsys, "predict", "--adapter", str(out), "--dataset", str(data), "--out", str(mine))
    assert str(mine) in err and "not a predictions file" in err
    assert mine.read_text() == "my,own\nnotes,here\n"


def test_fit_never_replaces_a_users_metrics_json(base, tiny, tmp_path):
    _, data = base
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"mine": 1}\n')
    before = tree(folder, data)
    err = api_error(reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit,
                    reclip.load_dataset(str(data), transform=tiny.preprocess), out=folder)
    assert str(folder) in err and "metrics.json" in err and "reclip did not write" in err
    assert tree(folder, data) == before


def test_a_reclip_run_folder_is_reused(base, tiny, tmp_path):
    _, data = base
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    run = reclip.ReCLIP(tiny, mode="zero-shot", workers=0)
    run.fit(dataset, out=tmp_path / "again")
    run.fit(dataset, out=tmp_path / "again")  # its own outputs are replaced
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["task"] == "zeroshot"


def test_adapt_never_writes_into_its_dataset(base, tmp_path, capsys):
    _, data = base
    copy = tmp_path / "dsX"
    shutil.copytree(data, copy)
    before = tree(copy)
    err = cli_error(capsys, "adapt", "--model", "tiny", "--dataset", str(copy), "--out", str(copy / "ant"),
                    "--epochs", "1", "--workers", "0")
    assert "inside the input folder" in err and str(copy) in err
    assert tree(copy) == before and not (copy / "ant" / "report.png").exists()


def test_fit_never_writes_over_its_input_list(base, tiny, tmp_path):
    _, data = base
    table = image_list(data, tmp_path / "predictions.csv")
    before = tree(table)
    err = api_error(reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit,
                    reclip.load_dataset(str(table), transform=tiny.preprocess), out=tmp_path)
    assert "predictions.csv" in err and str(table) in err
    assert tree(table) == before


# --- tracebacks -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_model_folder(tmp_path_factory):
    """An open_clip model folder like tiny but with 32-dimensional embeddings."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("other")
    config = json.loads((Path(reclip.__file__).parent / "models" / "configs" / "reclip-tiny.json").read_text())
    config["embed_dim"] = 32
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in CLIP(**config).state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    return folder


def test_an_adapter_applied_to_another_model_names_the_model_it_was_made_for(base, tmp_path, capsys,
                                                                              other_model_folder):
    out, data = base
    other = reclip.load_model(f"local-dir:{other_model_folder}", device="cpu")
    err = api_error(reclip.Adapter.load(out).apply, other)
    assert "made for model tiny" in err and f"local-dir:{other_model_folder}" in err
    before = tree(out, data)
    err = cli_error(capsys, "predict", "--adapter", str(out), "--model", f"local-dir:{other_model_folder}",
                    "--dataset", str(data), "--out", str(tmp_path / "p.csv"), "--workers", "0")
    assert "made for model tiny" in err
    assert tree(out, data) == before and not (tmp_path / "p.csv").exists()


def test_a_seed_beyond_the_range_is_refused(base, tmp_path, capsys):
    _, data = base
    err = api_error(reclip.ReclipConfig, seed=2**70)
    assert err.startswith("seed must be at most")
    err = cli_error(capsys, "adapt", "--model", "tiny", "--dataset", str(data), "--out", str(tmp_path / "o"),
                    "--seed", "1180591620717411303424")
    assert err.startswith("reclip: error: --seed must be at most") and not (tmp_path / "o").exists()
    assert reclip.ReclipConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_fit_on_a_dataset_without_transform_says_so(base, tiny):
    _, data = base
    err = api_error(reclip.ReCLIP(tiny, workers=0).fit, reclip.load_dataset(str(data)))
    assert err.startswith("dataset ") and "transform=model.preprocess" in err


@pytest.mark.parametrize("classnames", [[None, "dog"], [1, 2], ["cat", ["dog", 3]], ["cat", ""], "cat"])
def test_classnames_that_are_not_names_are_refused(make_image_folder, classnames):
    folder = make_image_folder(2)
    err = api_error(reclip.load_dataset, str(folder), classnames=classnames)
    assert err.startswith("classnames ") or err.startswith("class-names file cat")


def test_constructors_and_fit_check_their_argument_types(base, tiny):
    out, data = base
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    assert api_error(reclip.ReCLIP, tiny, "notaconfig").startswith("config must be a ReclipConfig; got str")
    assert api_error(reclip.ReCLIP, None).startswith("model must be a model from reclip.load_model")
    err = api_error(reclip.ReCLIP(tiny, workers=0).fit, "a/path")
    assert err.startswith("dataset must be an ImageDataset; got str") and "reclip.load_dataset('a/path'" in err
    err = api_error(reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit, dataset, callbacks=[object()])
    assert err.startswith("callbacks entry 0 must be a reclip.Callback")
    assert api_error(reclip.Adapter.load, None).startswith("path must be a path")
    assert api_error(reclip.Adapter.load(out).apply, None).startswith("model must be a model")
    assert api_error(reclip.ReCLIP(tiny, workers=0).fit, dataset, out="").startswith("out is an empty path")
    assert api_error(reclip.load_dataset, None).startswith("spec must be")
    assert api_error(reclip.load_dataset, str(data), transform="no").startswith("transform must be callable")


# --- silent wrong results ---------------------------------------------------------------

@pytest.mark.parametrize("names", [["cat", "cat"], ["Cat", "cat"], ["sea_lion", "sea lion"], [["a", "x"], "A"]])
def test_a_class_named_twice_is_refused_in_lists_as_in_files(make_image_folder, tmp_path, names):
    folder = make_image_folder(2)
    err = api_error(reclip.load_dataset, str(folder), classnames=names)
    assert err.startswith("classnames names ") and "twice (entries 0 and 1)" in err
    file = tmp_path / "names.txt"
    file.write_text("\n".join(n if isinstance(n, str) else "|".join(n) for n in names) + "\n")
    assert "twice (lines 1 and 2)" in api_error(reclip.load_dataset, str(folder), classnames=str(file))


def csv_file(tmp_path: Path, make_image_folder, rows: list[str], name: str = "list.csv") -> Path:
    """A list file beside a flat folder of 3 images named img0.png..img2.png."""
    make_image_folder(3, name="imgs")
    table = tmp_path / "imgs" / name
    table.write_text("\n".join(rows) + "\n")
    return table


@pytest.mark.parametrize("rows, message", [
    (["img0.png,cat", "c, d.png,bird", "img1.png,dog"], "line 2 has 3 fields"),
    (["img0.png,cat", "img1.png,dog", "img0.png,dog"], "twice (lines 1 and 3)"),
    (["img0.png,0", "img1.png,dog", "img2.png,cat"], "line 1: label '0' is a class index"),
    (["img0.png,1.0", "img1.png,0"], "line 1: label '1.0' is neither a class index"),
    (["img0.png,Cat", "img1.png,cat"], "labels 'Cat' (line 1) and 'cat' (line 2) differ only by case"),
    (["img0.png,-3"], "line 1: label -3 is negative"),
    (["img0.png,\"unclosed"], "cannot read"),
])
def test_ambiguous_csv_rows_are_refused_naming_the_line(tmp_path, make_image_folder, rows, message):
    table = csv_file(tmp_path, make_image_folder, rows)
    before = tree(table)
    err = api_error(reclip.load_dataset, str(table), classnames=["cat", "dog"])
    assert message in err and str(table) in err
    assert tree(table) == before


def test_a_label_index_beyond_the_classes_names_its_line(tmp_path, make_image_folder):
    table = csv_file(tmp_path, make_image_folder, ["img0.png,0", "img1.png,2"])
    assert "line 2 uses label 2" in api_error(reclip.load_dataset, str(table), classnames=["cat", "dog"])


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_csv_with_another_delimiter_keeps_its_labels(tmp_path, make_image_folder, delimiter):
    table = csv_file(tmp_path, make_image_folder, [f"path{delimiter}label", f"img0.png{delimiter}cat",
                                                   f"img1.png{delimiter}dog", f"img2.png{delimiter}cat"])
    dataset = reclip.load_dataset(str(table))
    assert dataset.classnames == [["cat"], ["dog"]] and dataset.labels.tolist() == [0, 1, 0]


def test_a_quoted_comma_in_a_path_is_one_path(tmp_path, make_image_folder):
    folder = make_image_folder(1, name="imgs")
    (folder / "img0.png").rename(folder / "c, d.png")
    table = folder / "list.csv"
    table.write_text('"c, d.png",bird\n')
    dataset = reclip.load_dataset(str(table))
    assert dataset.paths == [str(folder / "c, d.png")] and dataset.classnames == [["bird"]]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_output_honours_the_umask(base, tmp_path, mask):
    _, data = base
    old = os.umask(mask)
    try:
        model = reclip.load_model("tiny", device="cpu")
        reclip.ReCLIP(model, epochs=1, k=5, workers=0).fit(
            reclip.load_dataset(str(data), transform=model.preprocess), out=tmp_path / "out")
    finally:
        os.umask(old)
    outputs = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".reclip.lock"]
    outputs += list((tmp_path / "cache").rglob("*.safetensors"))
    assert {p.suffix for p in outputs} >= {".safetensors", ".json", ".csv", ".png"}
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in outputs} == \
        {p.name: oct(0o666 & ~mask) for p in outputs}


# --- unclear errors ---------------------------------------------------------------------

def test_predict_on_more_classes_than_the_adapter_names_the_adapter_and_the_class(base, tmp_path, capsys):
    out, data = base
    ds4 = tmp_path / "ds4"
    shutil.copytree(data, ds4)
    shutil.copytree(data / "cat", ds4 / "dog")
    before = tree(ds4, out)
    err = cli_error(capsys, "predict", "--adapter", str(out), "--dataset", str(ds4),
                    "--out", str(tmp_path / "p.csv"), "--workers", "0")
    assert f"adapter {out} lists 3 classes" in err and "4 class folders" in err and "'dog'" in err
    assert "classnames" not in err
    assert tree(ds4, out) == before


def test_an_empty_dataset_is_called_empty(base, tiny):
    _, data = base
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    err = api_error(reclip.ReCLIP(tiny, workers=0).fit, dataset.subset([]))
    assert err.startswith("dataset ") and "is empty (0 images" in err


def test_templates_as_one_string_are_refused(base, tiny):
    _, data = base
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    err = api_error(reclip.ReCLIP(tiny, workers=0).fit, dataset, templates="a photo of a {}.")
    assert err == "templates must be a list of templates, not one string; write templates=['a photo of a {}.']"


def test_numpy_numbers_are_accepted_where_python_ones_are():
    config = reclip.ReclipConfig(epochs=np.int64(2), batch_size=np.int32(8), k=np.float64(5.0),
                                 lr_v=np.float32(0.5), seed=np.uint8(3))
    assert (config.epochs, config.batch_size, config.k, config.seed) == (2, 8, 5, 3)
    assert all(type(v) is int for v in (config.epochs, config.batch_size, config.k, config.seed))
    assert type(config.lr_v) is float and json.dumps(config.to_dict())
    assert api_error(reclip.ReclipConfig, epochs=np.float64(2.5)) == "epochs must be a whole number; got 2.5"
    assert api_error(reclip.ReclipConfig, epochs=True).startswith("epochs must be a whole number; got bool")


def test_a_relative_csv_survives_a_change_of_folder(base, tiny, tmp_path, monkeypatch):
    _, data = base
    shutil.copytree(data, tmp_path / "images")
    table = image_list(tmp_path / "images", tmp_path / "list.csv")
    table.write_text(table.read_text().replace(str(tmp_path) + "/", ""))  # relative rows
    monkeypatch.chdir(tmp_path)
    dataset = reclip.load_dataset("list.csv", transform=tiny.preprocess)
    folder = reclip.load_dataset("images", transform=tiny.preprocess)
    monkeypatch.chdir(tmp_path.parent)
    for ds in (dataset, folder):
        result = reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(ds)
        assert result.metrics["n"] == 24 and result.metrics["skipped"] == 0


def test_an_unwritable_cache_warns_before_extraction_and_runs_without_it(base, tiny, tmp_path, monkeypatch):
    _, data = base
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("RECLIP_CACHE", str(tmp_path / "file" / "cache"))
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    with pytest.warns(RuntimeWarning, match="feature cache .* is not writable .*running without it") as record:
        result = reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(dataset)
    assert len([w for w in record if "feature cache" in str(w.message)]) == 1
    assert result.metrics["n"] == 24 and (tmp_path / "file").read_text() == "x"


def test_every_entry_not_read_is_counted_by_kind(base, tiny, tmp_path):
    _, data = base
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    for i in range(4):
        (folder / "ant" / f"broken{i}.png").write_bytes(b"not a png")
    (folder / "bee" / "gone.png").symlink_to(tmp_path / "missing.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = reclip.load_dataset(str(folder), transform=tiny.preprocess)
        result = reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(dataset, out=tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["skipped"] == 5 == result.metrics["skipped"]
    assert metrics["skipped_by_kind"] == {"broken links": 1, "unreadable images": 4}


def test_resume_without_a_checkpoint_is_one_line(base, tmp_path, capsys):
    _, data = base
    before = tree(data)
    err = cli_error(capsys, "adapt", "--model", "tiny", "--dataset", str(data), "--out", str(tmp_path / "typo"),
                    "--epochs", "1", "--workers", "0", "--resume")
    assert err.startswith("reclip: error: --resume finds no checkpoint in") and str(tmp_path / "typo") in err
    assert tree(data) == before and not (tmp_path / "typo" / "metrics.json").exists()


@pytest.mark.parametrize("command", ["adapt", "zeroshot", "predict"])
def test_an_empty_out_is_refused(base, tmp_path, capsys, monkeypatch, command):
    out, data = base
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", str(data), "--out", "", "--workers", "0"]
    argv = ["--adapter", str(out), *argv] if command == "predict" else ["--model", "tiny", *argv]
    err = cli_error(capsys, command, *argv)
    assert err.startswith("reclip: error: --out is an empty path")
    assert list(tmp_path.iterdir()) == []


# --- principles: caches prove their content, a full temporary folder is one line ---------

def test_a_cache_entry_is_not_served_for_a_file_replaced_with_its_times_kept(make_image_folder, tiny, tmp_path):
    folder = make_image_folder({"ant": 2, "bee": 2}, ext=".bmp")  # every file the same size
    first = reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(
        reclip.load_dataset(str(folder), transform=tiny.preprocess))
    # another image of the same size, given the old one's times (as cp -p or rsync -t would)
    target, other = folder / "ant" / "img0.bmp", folder / "bee" / "img0.bmp"
    assert target.stat().st_size == other.stat().st_size
    times = target.stat()
    replacement = tmp_path / "replacement.bmp"
    shutil.copyfile(other, replacement)
    os.utime(replacement, ns=(times.st_atime_ns, times.st_mtime_ns))
    os.replace(replacement, target)
    again = reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(
        reclip.load_dataset(str(folder), transform=tiny.preprocess))
    assert again.metrics["images_per_s"] is not None  # extracted, not served from the cache
    assert not torch.equal(again.zero_shot.probs, first.zero_shot.probs)


def test_the_same_files_under_other_labels_are_another_cache_entry(tmp_path, make_image_folder, tiny):
    table = csv_file(tmp_path, make_image_folder, ["img0.png,cat", "img1.png,dog", "img2.png,dog"])
    first = reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(
        reclip.load_dataset(str(table), transform=tiny.preprocess, classnames=["cat", "dog"]))
    swapped = reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(
        reclip.load_dataset(str(table), transform=tiny.preprocess, classnames=["dog", "cat"]))
    assert first.predictions.labels.tolist() == [0, 1, 1] and swapped.predictions.labels.tolist() == [1, 0, 0]


def test_no_room_for_the_pixel_cache_is_one_line_and_leaves_no_file(base, tiny, tmp_path, monkeypatch):
    import errno
    import tempfile

    _, data = base
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    err = api_error(reclip.ReCLIP(tiny, epochs=1, k=5, workers=0).fit, dataset, out=tmp_path / "out")
    assert err.startswith("cannot write the decoded-pixel cache") and str(tmp_path / "tmp") in err
    assert list((tmp_path / "tmp").iterdir()) == [] and not (tmp_path / "out" / "metrics.json").exists()


def test_an_unusable_temporary_folder_is_one_line(base, tiny, tmp_path, monkeypatch):
    import tempfile

    _, data = base
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "file" / "tmp"))
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    err = api_error(reclip.ReCLIP(tiny, epochs=1, k=5, workers=0).fit, dataset)
    assert err.startswith("cannot write the decoded-pixel cache in") and str(tmp_path / "file") in err


def test_a_later_run_in_the_same_folder_leaves_nothing_of_the_earlier_one(base, tiny, tmp_path):
    out, data = base
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    assert (folder / "adapter.safetensors").is_file() and (folder / "report.png").is_file()
    reclip.ReCLIP(tiny, mode="zero-shot", workers=0).fit(
        reclip.load_dataset(str(data), transform=tiny.preprocess), out=folder)
    assert not (folder / "adapter.safetensors").exists() and not (folder / "report.png").exists()
    assert json.loads((folder / "metrics.json").read_text())["mode"] == "zero-shot"


def test_subset_and_random_subset_check_their_arguments(base, tiny):
    _, data = base
    dataset = reclip.load_dataset(str(data), transform=tiny.preprocess)
    assert api_error(dataset.subset, [0, 24]).startswith("indices holds 24, outside the dataset's 24 images")
    assert api_error(dataset.subset, [0.5]).startswith("indices must be a flat list of whole numbers")
    assert len(dataset.subset(np.array([3, 1], dtype=np.int32))) == 2
    assert api_error(reclip.random_subset, dataset, 0) == "n must be at least 1; got 0"
    assert len(reclip.random_subset(dataset, np.int64(5), seed=np.int64(1))) == 5
    assert api_error(reclip.random_subset, "folder", 5).startswith("dataset must be an ImageDataset")
