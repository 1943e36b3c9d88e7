"""Tiny random models (2 layers, hidden 64) and a small word-level tokenizer, all built offline from config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS = ("the a an of to in and is was for on with as by at from it that this be are or which one two three "
         "cat dog fox bird fish runs jumps sleeps eats quick brown lazy red blue green big small over under "
         "query passage search retrieve relevant given web answer text model embed vector paris france capital "
         "city river water tree house car road music art science math data learn").split()
SPECIALS = ["<|endoftext|>", "<|im_end|>", "<unk>", "[CLS]", "[SEP]"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + list("abcdefghijklmnopqrstuvwxyz:.?!,\n"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<unk>",
                                   pad_token="<|endoftext|>")


def make_backbone(arch: str, vocab_size: int):
    from transformers import (
        BertConfig,
        BertModel,
        LlamaConfig,
        LlamaModel,
        Qwen2Config,
        Qwen2Model,
        Qwen3Config,
        Qwen3Model,
    )

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512)
    if arch == "qwen2":
        return Qwen2Model(Qwen2Config(num_key_value_heads=2, **common))
    if arch == "qwen3":
        return Qwen3Model(Qwen3Config(num_key_value_heads=2, head_dim=16, **common))
    if arch == "llama":
        return LlamaModel(LlamaConfig(num_key_value_heads=2, **common))
    if arch == "bert":
        return BertModel(BertConfig(**common))
    raise ValueError(arch)


def write_base(folder: Path, arch: str) -> Path:
    """A plain HF folder: tiny random backbone + tokenizer (a base LLM, before any embedder config)."""
    tok = make_tokenizer()
    model = make_backbone(arch, len(tok))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def base_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {arch: write_base(root / arch, arch) for arch in ("qwen2", "qwen3", "llama", "bert")}


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()
