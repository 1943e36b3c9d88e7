"""Switch a decoder LLM between causal and bidirectional attention, in place and idempotently.

Why one function and an allow-list instead of a copied modeling file per architecture (as llm2vec did):
transformers >= 5.2 builds a padding-only mask when `config.is_causal` is False
(`masking_utils.create_causal_mask` falls back to `create_bidirectional_mask`). SDPA and flash-attention also
read each attention module's own `is_causal` flag when no mask is passed (no padding), so both are set; leaving
the module flag at True is the classic bug where an unpadded batch silently stays causal.

An architecture is verified when tests/test_bidirectional.py proves, for eager and sdpa, with and without
padding, that perturbing the last token changes the first token's hidden state in bidirectional mode and not
in causal mode. To add one: put its `model_type` into DECODERS below and add it to that test's parametrisation.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

#: decoder `model_type`s proven bidirectional by the test suite
DECODERS = ("qwen2", "qwen3", "llama")
#: encoder `model_type`s (already bidirectional; usable as baselines)
ENCODERS = ("bert", "xlm-roberta", "roberta", "mpnet")


def architecture_kind(model_type: str) -> Literal["decoder", "encoder"]:
    """Whether `model_type` is a verified decoder or a known encoder; a clear error otherwise."""
    if model_type in DECODERS:
        return "decoder"
    if model_type in ENCODERS:
        return "encoder"
    raise ValueError(
        f"unsupported architecture model_type={model_type!r}. Verified decoders: {', '.join(DECODERS)}; "
        f"encoders: {', '.join(ENCODERS)}. To add a decoder, append its model_type to DECODERS in "
        "qzhou/modeling/bidirectional.py and to the parametrisation of tests/test_bidirectional.py, "
        "then run that test (it proves bidirectionality for eager and sdpa, with and without padding)."
    )


def set_attention(model: nn.Module, mode: Literal["bidirectional", "causal"]) -> nn.Module:
    """Make `model` (a transformers PreTrainedModel) attend `mode`-wise; returns the same model.

    Sets `config.is_causal` (read by the mask builder, and saved to config.json so plain `AutoModel` loads
    the model bidirectional) and `is_causal` on every attention module (read by sdpa / flash-attention).
    """
    if mode not in ("bidirectional", "causal"):
        raise ValueError(f"attention must be 'bidirectional' or 'causal' (got {mode!r})")
    kind = architecture_kind(model.config.model_type)
    if kind == "encoder":
        if mode == "causal":
            raise ValueError(f"{model.config.model_type} is an encoder; it has no causal mode")
        return model
    causal = mode == "causal"
    model.config.is_causal = causal
    for module in model.modules():
        if type(module).__name__.endswith("Attention") and hasattr(module, "is_causal"):
            module.is_causal = causal
    return model


def attention_of(model: nn.Module) -> Literal["bidirectional", "causal"]:
    """The attention mode `model` currently runs in."""
    if architecture_kind(model.config.model_type) == "encoder":
        return "bidirectional"
    return "causal" if getattr(model.config, "is_causal", True) else "bidirectional"
