"""Results that depend on the inputs and settings only: bf16 switch, k-NN backends and threads."""
from __future__ import annotations

import pytest
import torch

from reclip import precision
from reclip.errors import ReclipError


@pytest.mark.parametrize("value, expected", [("on", True), ("off", False), ("auto", None), ("", None)])
def test_reclip_bf16_forces_the_autocast_choice(monkeypatch, value, expected):
    monkeypatch.setenv(precision.BF16_ENV, value)
    want = precision.native_bf16("cpu") if expected is None else expected
    assert precision.uses_bf16("cpu") is want
    with precision.autocast("cpu"):
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == (torch.bfloat16 if want else torch.float32)


def test_reclip_bf16_rejects_an_unknown_value(monkeypatch):
    monkeypatch.setenv(precision.BF16_ENV, "maybe")
    with pytest.raises(ReclipError, match="RECLIP_BF16 must be one of auto, on, off"):
        precision.uses_bf16("cpu")
