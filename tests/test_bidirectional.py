"""Bidirectional attention is proven per verified decoder and per attention implementation, with and without
padding: perturbing the last real token changes the first token's state only in bidirectional mode."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import make_backbone

from qzhou.modeling.bidirectional import DECODERS, architecture_kind, attention_of, set_attention

IMPLS = ["eager", "sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else [])


def first_token_shift(model, padding: str) -> float:
    """Max change of the first real token's state when only the last real token changes."""
    torch.manual_seed(1)
    ids = torch.randint(5, 60, (2, 7))
    mask = torch.ones_like(ids)
    first = 0
    if padding == "left":
        mask[:, :2] = 0
        first = 2
    elif padding == "right":
        mask[:, -2:] = 0
    last = int((mask[0] * torch.arange(7)).argmax())
    ids2 = ids.clone()
    ids2[:, last] = (ids[:, last] + 7) % 60 + 5
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, first]
        b = model(input_ids=ids2, attention_mask=mask).last_hidden_state[:, first]
    return float((a - b).abs().max())


@pytest.mark.parametrize("arch", DECODERS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_bidirectional_sees_the_future_causal_does_not(arch, impl, padding):
    model = make_backbone(arch, 64)
    model.config._attn_implementation = impl
    model.eval()
    set_attention(model, "bidirectional")
    assert attention_of(model) == "bidirectional"
    assert first_token_shift(model, padding) > 1e-3
    set_attention(model, "causal")
    assert attention_of(model) == "causal"
    assert first_token_shift(model, padding) < 1e-6


def test_set_attention_is_idempotent():
    model = make_backbone("qwen2", 64).eval()
    set_attention(model, "bidirectional")
    ids = torch.randint(5, 60, (1, 6))
    with torch.no_grad():
        once = model(input_ids=ids).last_hidden_state
        set_attention(model, "bidirectional")
        twice = model(input_ids=ids).last_hidden_state
    assert torch.equal(once, twice)
    flags = {m.is_causal for m in model.modules() if type(m).__name__.endswith("Attention")}
    assert flags == {False} and model.config.is_causal is False


def test_unknown_architecture_says_what_is_supported_and_how_to_add():
    with pytest.raises(ValueError) as e:
        architecture_kind("mamba")
    msg = str(e.value)
    assert "mamba" in msg and "qwen2" in msg and "DECODERS" in msg and "test_bidirectional" in msg


def test_encoder_has_no_causal_mode():
    model = make_backbone("bert", 64)
    assert set_attention(model, "bidirectional") is model
    with pytest.raises(ValueError, match="encoder"):
        set_attention(model, "causal")
