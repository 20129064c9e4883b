"""Without network: model loading fails in seconds with one complete line that says, in the
caller's terms, how to pass local weights; the CLI checks the dataset before the model."""
from __future__ import annotations

import socket
import time

import pytest

import reclip
from reclip.cli.main import main
from reclip.errors import ArgumentError
from reclip.models import hub


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """The hub endpoint is a local port nobody listens on, and the hub cache is empty."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connecting is refused
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's own URL cache (~/.cache/clip) is empty too
    hub._can_connect.cache_clear()
    yield
    hub._can_connect.cache_clear()


def test_hub_reachable_asks_once(unreachable_hub):
    assert hub.hub_reachable() is False
    assert hub.hub_reachable() is False
    assert hub._can_connect.cache_info().misses == 1


def test_openai_weights_without_network_fail_fast_in_python_terms(unreachable_hub):
    start = time.perf_counter()
    with pytest.raises(ArgumentError) as err:
        reclip.load_model("ViT-B-32", pretrained="openai", device="cpu")
    seconds = time.perf_counter() - start
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("(or an open_clip folder as local-dir:/path)")
    assert "could not load weights 'openai' for ViT-B-32: the model hub is unreachable" in msg
    assert "pretrained='/path/to/open_clip_model.safetensors'" in msg and "--pretrained" not in msg
    assert err.value.param == "pretrained"
    # no retry loop (huggingface_hub's took 50-68 s); the bound leaves room for a loaded machine
    assert seconds < 30


def test_cli_names_the_flag(unreachable_hub, domain, tmp_path, capsys):
    assert main(["zeroshot", "--model", "ViT-B-32", "--pretrained", "openai", "--dataset", str(domain),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reclip: error: could not load weights 'openai'")
    assert "pass --pretrained /path/to/open_clip_model.safetensors" in err and "pretrained='" not in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_hf_models_without_network(unreachable_hub, capsys):
    pytest.importorskip("transformers")
    with pytest.raises(ArgumentError) as err:
        reclip.load_model("hf:openai/clip-vit-base-patch32", device="cpu")
    assert "the model hub is unreachable" in str(err.value) and "spec='hf:/path/to/folder'" in str(err.value)
    assert main(["zeroshot", "--model", "hf:openai/clip-vit-base-patch32", "--dataset", "/no/such/folder",
                 "--out", "/tmp/unused"]) == 2
    err = capsys.readouterr().err
    assert "/no/such/folder" in err and "Hugging Face" not in err  # the dataset is checked first
    with pytest.raises(ArgumentError, match=r"pretrained='openai': not used with hf: models"):
        reclip.load_model("hf:openai/clip-vit-base-patch32", pretrained="openai", device="cpu")


def test_the_dataset_is_checked_before_the_model(unreachable_hub, tmp_path, capsys):
    start = time.perf_counter()
    assert main(["adapt", "--model", "ViT-B-32", "--pretrained", "openai", "--dataset", str(tmp_path / "none"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and "weights" not in err
    assert time.perf_counter() - start < 30


def test_missing_benchmark_names_root_in_python_and_data_root_on_the_cli(tmp_path, capsys, monkeypatch):
    # CIFAR-10 without its files and without network (every connection refused): the download fails
    from reclip.data import benchmarks

    def no_network(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused (test: no network)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ArgumentError) as err:
        reclip.load_dataset("cifar10", root=tmp_path / "empty")
    assert "pick the folder with root='/path/to/folder'" in str(err.value) and err.value.param == "root"
    assert main(["zeroshot", "--model", "tiny", "--dataset", "cifar10", "--data-root", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pick the folder with --data-root /path/to/folder" in err and "root=" not in err
    assert benchmarks.DOWNLOAD_HINT.count("{arg}") == 1


def test_epochs_zero_is_refused_on_the_command_line(domain, tmp_path, capsys):
    assert main(["adapt", "--model", "tiny", "--dataset", str(domain), "--epochs", "0",
                 "--out", str(tmp_path / "out")]) == 2
    assert "--epochs must be at least 1; got 0" in capsys.readouterr().err
    assert main(["demo", "--epochs", "0", "--out", str(tmp_path / "demo")]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
