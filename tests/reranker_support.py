"""Shared by tests/test_reranker*.py: a tiny random Qwen3ForCausalLM with a real byte-level BPE tokenizer (trained
here on a few sentences) that carries Qwen's chat special tokens and has "yes" and "no" as single tokens."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
SENTENCES = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    'Note that the answer can only be "yes" or "no".',
    "Given a web search query, retrieve relevant passages that answer the query",
    "What is the capital of France? Paris is the capital and largest city of France.",
    "The quick brown fox jumps over the lazy dog. A cat sleeps in the house by the river.",
    "yes no yes no yes no system user assistant Instruct Query Document",
    "Music, art, science and math: data helps us learn about water, trees and roads.",
]


def make_bpe_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for word in ("yes", "no"):
        assert len(fast.encode(word, add_special_tokens=False)) == 1, word
    return fast


def write_causal(folder: Path, arch: str = "qwen3", tie: bool = False, seed: int = 0) -> Path:
    """A tiny random *ForCausalLM + the BPE tokenizer saved as a plain HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = make_bpe_tokenizer()
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                  tie_word_embeddings=tie, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    with torch.no_grad():  # random init gives near-equal logits; spread the yes/no rows so scores differ
        model.lm_head.weight.mul_(8.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
