"""Saving out of training: LoRA merged from a state dict equals peft's own merge_and_unload; a model folder
written from a given (gathered) state dict holds exactly that state."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_backbone
from safetensors.torch import load_file

from qzhou.config import EmbedderConfig
from qzhou.modeling.embedder import Embedder
from qzhou.training.saving import merge_lora_state


def lora(arch: str, **kwargs):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_backbone(arch, 120), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **kwargs))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it count
            torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("arch,kwargs", [("qwen2", {}), ("llama", {"use_rslora": True})])
def test_merge_equals_peft(arch, kwargs):
    model = lora(arch, **kwargs)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    merged = merge_lora_state(model, model.state_dict())
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, atol=1e-6, rtol=1e-6, msg=key)
    changed = [k for k in expected if not torch.equal(expected[k], make_backbone(arch, 120).state_dict()[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # the adapted linears, nothing else


def test_dora_refused():
    with pytest.raises(NotImplementedError, match="DoRA"):
        merge_lora_state(lora("qwen2", use_dora=True), lora("qwen2", use_dora=True).state_dict())


def test_save_from_given_state(tmp_path, tokenizer):
    backbone = make_backbone("qwen2", len(tokenizer))
    state = {k: torch.randn_like(v) for k, v in backbone.state_dict().items()}
    Embedder(backbone, tokenizer, EmbedderConfig(attention="bidirectional", pooling="mean")).save(tmp_path, dict(state))
    saved = load_file(tmp_path / "model.safetensors")
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)
    assert not torch.equal(saved["norm.weight"], backbone.state_dict()["norm.weight"])


def test_merge_through_wrapper_names():
    """Engine wrappers (FSDP, activation checkpointing) add parts to module names that state dicts leave out."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    model = lora("qwen2")
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    layer = type(model.get_base_model().layers[0])
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, layer))
    assert any("_checkpoint_wrapped_module" in n for n, _ in model.named_modules())
    merged = merge_lora_state(model, model.state_dict())
    assert merged.keys() == expected.keys()
    assert all(torch.allclose(merged[k], v, atol=1e-6) for k, v in expected.items())
