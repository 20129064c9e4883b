"""Broken state gives one line, never a traceback: damaged adapters, checkpoints and caches,
hand-edited adapters, unwritable output folders, interrupted runs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import reclip
from reclip.cli import adapt as adapt_cli
from reclip.cli.main import main
from reclip.method.adapter import Adapter
from reclip.method.checkpoint import CHECKPOINT
from reclip.paths import feature_cache_dir

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import make_clustered_folder  # noqa: E402


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-epoch run: (its folder, the dataset folder)."""
    base = tmp_path_factory.mktemp("run")
    model = reclip.load_model("tiny", device="cpu")
    data = make_clustered_folder(base / "images", model, classes=3, per_class=10)
    reclip.ReCLIP(model, epochs=1, k=5, workers=0).fit(
        reclip.load_dataset(str(data), transform=model.preprocess), out=base / "out")
    return base / "out", data


def damaged(blob: bytes) -> dict[str, bytes]:
    return {"empty": b"", "truncated": blob[: len(blob) // 2], "header only": blob[:8],
            "random": os.urandom(4096), "text": b"{\"not\": \"safetensors\"}\n"}


@pytest.mark.parametrize("kind", ["empty", "truncated", "header only", "random", "text"])
def test_damaged_adapter_is_one_line(run, tmp_path, kind, capsys):
    out, data = run
    bad = tmp_path / "adapter.safetensors"
    bad.write_bytes(damaged((out / "adapter.safetensors").read_bytes())[kind])
    with pytest.raises(reclip.ReclipError, match=r"is not a readable reclip adapter|has no reclip metadata") as info:
        Adapter.load(bad)
    assert "\n" not in str(info.value)
    assert main(["predict", "--adapter", str(bad), "--dataset", str(data), "--out", str(tmp_path / "p.csv")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("kind", ["empty", "truncated", "header only", "random", "text"])
def test_damaged_checkpoint_is_one_line(run, tmp_path, kind):
    out, data = run
    copy = tmp_path / "out"
    (copy / CHECKPOINT).parent.mkdir(parents=True)
    (copy / CHECKPOINT).write_bytes(damaged((out / CHECKPOINT).read_bytes())[kind])
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(data), transform=model.preprocess)
    with pytest.raises(reclip.ReclipError, match="checkpoint") as info:
        reclip.ReCLIP(model, epochs=1, k=5, workers=0).fit(dataset, out=copy, resume=True)
    assert "\n" not in str(info.value) and "delete it to start over" in str(info.value)


@pytest.mark.parametrize("kind", ["empty", "truncated", "header only", "random", "text"])
def test_damaged_feature_cache_entry_is_a_miss(run, tmp_path, kind):
    _, data = run
    model = reclip.load_model("tiny", device="cpu")
    dataset = reclip.load_dataset(str(data), transform=model.preprocess)
    first = reclip.ReCLIP(model, mode="zero-shot", workers=0).fit(dataset)
    [entry] = feature_cache_dir().glob("*.safetensors")
    entry.write_bytes(damaged(entry.read_bytes())[kind])
    again = reclip.ReCLIP(model, mode="zero-shot", workers=0).fit(dataset)
    torch.testing.assert_close(again.zero_shot.probs, first.zero_shot.probs)
    assert entry.stat().st_size > 4096  # rewritten whole


def edited(out: Path, tmp_path: Path, meta_edit=None, tensor_edit=None) -> Path:
    adapter = Adapter.load(out)
    tensors = {f"norm.{k}": v for k, v in {**adapter.image_norms, **adapter.text_norms}.items()}
    tensors["head.v_classifier"], tensors["head.t_classifier"] = adapter.v_classifier, adapter.t_classifier
    meta = dict(adapter.meta)
    if meta_edit:
        meta = meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    path = tmp_path / "edited.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"reclip": json.dumps(meta)})
    return path


@pytest.mark.parametrize("edit, message", [
    (dict(meta_edit=lambda m: {k: v for k, v in m.items() if k != "classnames"}), "'classnames' is missing"),
    (dict(meta_edit=lambda m: [1, 2]), "has no reclip metadata"),
    (dict(meta_edit=lambda m: {**m, "classnames": "ant,bee"}), "'classnames' is missing or not a list"),
    (dict(meta_edit=lambda m: {**m, "classnames": m["classnames"] + [["extra"]]}), "expected 4 x D floats"),
    (dict(meta_edit=lambda m: {**m, "mode": "transductive"}), "is not a training mode"),
    (dict(tensor_edit=lambda t: t.update({"head.t_classifier": t["head.t_classifier"].long()})), "dtype torch.int64"),
    (dict(tensor_edit=lambda t: t.update({"head.v_classifier": t["head.v_classifier"][:, :5]})), "different widths"),
    (dict(tensor_edit=lambda t: t.update({"head.v_classifier": t["head.v_classifier"] * float("nan")})),
     "non-finite values"),
])
def test_hand_edited_adapters_are_refused_in_one_line(run, tmp_path, edit, message):
    with pytest.raises(reclip.ReclipError, match=message) as info:
        Adapter.load(edited(run[0], tmp_path, **edit))
    assert "\n" not in str(info.value)


def test_half_precision_heads_are_read_as_float32(run, tmp_path):
    path = edited(run[0], tmp_path, tensor_edit=lambda t: t.update(
        {k: t[k].half() for k in ("head.v_classifier", "head.t_classifier")}))
    adapter = Adapter.load(path)
    assert adapter.v_classifier.dtype == torch.float32
    torch.testing.assert_close(adapter.v_classifier, Adapter.load(run[0]).v_classifier, atol=1e-3, rtol=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_fails_before_any_work(run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    model = reclip.load_model("tiny", device="cpu")
    with pytest.raises(reclip.ReclipError, match="cannot write to the output folder"):
        reclip.ReCLIP(model, workers=0).fit(reclip.load_dataset(str(run[1]), transform=model.preprocess),
                                            out=locked / "out")


def test_output_folder_inside_a_file_is_one_line(run, tmp_path):
    (tmp_path / "file").write_text("x")
    model = reclip.load_model("tiny", device="cpu")
    with pytest.raises(reclip.ReclipError, match="cannot write to the output folder"):
        reclip.ReCLIP(model, workers=0).fit(reclip.load_dataset(str(run[1]), transform=model.preprocess),
                                            out=tmp_path / "file" / "out")


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_interrupt_message_points_to_a_checkpoint_only_when_one_exists(run, tmp_path, monkeypatch, capsys,
                                                                       with_checkpoint):
    out, data = run
    target = tmp_path / "out"
    if with_checkpoint:
        (target / CHECKPOINT).parent.mkdir(parents=True)
        (target / CHECKPOINT).write_bytes((out / CHECKPOINT).read_bytes())

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapt_cli.ReCLIP, "fit", interrupted)
    with pytest.raises(SystemExit) as info:
        adapt_cli.run(adapt_cli_args(data, target))
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert ("--resume (checkpoint:" in err) == with_checkpoint
    assert ("nothing to resume" in err) != with_checkpoint


def adapt_cli_args(data: Path, out: Path):
    import argparse

    parser = argparse.ArgumentParser()
    adapt_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["adapt", "--model", "tiny", "--dataset", str(data), "--out", str(out),
                              "--workers", "0"])


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno

    from reclip.io import write_json

    target = tmp_path / "metrics.json"
    write_json(target, {"run": 1})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(reclip.ReclipError, match=r"cannot write .*metrics.json \(No space left on device\)") as info:
        write_json(target, {"run": 2})
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"run": 1} and not list(tmp_path.glob(".*.tmp"))
