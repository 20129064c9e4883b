"""WebDataset shards (clip_benchmark layout) read in place, with random access."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reclip
from reclip.cli.main import main
from reclip.errors import ReclipError


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png(colour: tuple[int, int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (12, 10), colour if mode == "RGB" else colour[0]).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path) -> Path:
    """3 shards of 4, 4 and 3 samples, 2 classes, one corrupt image; classnames.txt one level up."""
    root = tmp_path / "wds"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("red square\nblue square\n")
    k = 0
    for s, count in enumerate((4, 4, 3)):
        with tarfile.open(root / "test" / f"{s:06d}.tar", "w") as tar:
            for _ in range(count):
                label = k % 2
                data = b"broken" if k == 5 else png((200, 10, 10) if label == 0 else (10, 10, 200), "L" if k == 2 else "RGB")
                add(tar, f"s{k:07d}.png", data)
                add(tar, f"s{k:07d}.cls", str(label).encode())
                k += 1
    return root


def test_shards_are_read_in_place_with_random_access(shards):
    ds = reclip.load_dataset(f"wds:{shards}/test/{{000000..000002}}.tar")
    assert len(ds) == 11 and ds.classnames == [["red square"], ["blue square"]]
    assert ds.labels.tolist() == [k % 2 for k in range(11)]
    assert ds[9][0].getpixel((0, 0)) == (10, 10, 200) and ds[10][0].getpixel((0, 0)) == (200, 10, 10) and ds[2][0].mode == "RGB"
    with pytest.warns(UserWarning, match="s0000005.png"):
        assert ds[5][0] is None
    assert not list(shards.rglob("*.png"))  # nothing unpacked


def test_zeroshot_on_shards(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("RECLIP_CACHE", str(tmp_path / "cache"))
    assert main(["zeroshot", "--model", "tiny", "--dataset", f"wds:{shards}/test/{{000000..000002}}.tar",
                 "--out", str(tmp_path / "out"), "--workers", "0"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["skipped"] == 1


@pytest.mark.parametrize("pattern, message", [
    ("{000000..000009}.tar", "does not exist"),
    ("000000.tar", "no classnames.txt"),
])
def test_shard_errors(shards, pattern, message):
    (shards / "classnames.txt").rename(shards / "names.bak") if "classnames" in message else None
    with pytest.raises(ReclipError, match=message):
        reclip.load_dataset(f"wds:{shards}/test/{pattern}")


def test_not_a_tar(tmp_path):
    bad = tmp_path / "x.tar"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ReclipError, match="cannot read webdataset shard"):
        reclip.load_dataset(f"wds:{bad}")
