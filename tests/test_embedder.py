"""encode(): batched == one text at a time, input order kept, padding side irrelevant, prompts, Matryoshka,
dtype, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qzhou import Embedder
from qzhou.modeling.embedder import token_batches

TEXTS = ["the cat", "a big brown dog runs over the lazy fox in the city", "paris", "the red bird eats fish",
         "one two three", "music art science math data learn model embed vector"]


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "llama", "bert"])
def embedder(request, base_dirs):
    pooling = {"qwen2": "mean", "qwen3": "last", "llama": "mean", "bert": "cls"}[request.param]
    attention = "causal" if request.param == "qwen3" else "bidirectional"
    return Embedder.load(base_dirs[request.param], dtype="float32", attention=attention, pooling=pooling)


def test_batched_equals_one_at_a_time_in_input_order(embedder):
    batched = embedder.encode(TEXTS, batch_tokens=64)
    single = np.stack([embedder.encode(t) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_padding_side_does_not_change_embeddings(embedder):
    if embedder.backbone.config.model_type == "bert":
        pytest.skip("absolute position embeddings: encoders are right-padded only")
    side = embedder.config.padding_side
    a = embedder.encode(TEXTS)
    embedder.tokenizer.padding_side = "right" if side == "left" else "left"
    try:
        b = embedder.encode(TEXTS)
    finally:
        embedder.tokenizer.padding_side = side
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_matryoshka_dim_is_prefix_renormalised(embedder):
    full = embedder.encode(TEXTS, convert_to="torch")
    raw = embedder.config.normalize
    small = embedder.encode(TEXTS, dim=16, convert_to="torch")
    assert small.shape == (len(TEXTS), 16)
    # the first 16 dims of the unnormalised vector, normalised: same direction as full[:, :16]
    assert raw and torch.allclose(small, torch.nn.functional.normalize(full[:, :16], dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="hidden size 64"):
        embedder.encode(TEXTS, dim=65)


def test_query_prompt_and_instruction(embedder):
    c = embedder.config
    assert embedder.format(["x"], prompt_name="query") == ["Instruct: " + c.default_task + "\nQuery:x"]
    assert embedder.format(["x"], instruction="Find cats") == ["Instruct: Find cats\nQuery:x"]
    assert embedder.format(["x"], prompt_name="document") == ["x"] == embedder.format(["x"])
    q = embedder.encode(["the cat"], instruction="Find cats")
    np.testing.assert_allclose(q, embedder.encode(["Instruct: Find cats\nQuery:the cat"]), atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        embedder.format(["x"], prompt_name="query", instruction="y")
    with pytest.raises(ValueError, match="unknown prompt_name"):
        embedder.format(["x"], prompt_name="passage")


def test_bad_texts_are_named(embedder):
    with pytest.raises(ValueError, match="text 1 is empty"):
        embedder.encode(["ok", "  "])
    with pytest.raises(TypeError, match="text 0 is int"):
        embedder.encode([3])


def test_truncation_to_max_length(base_dirs):
    e = Embedder.load(base_dirs["qwen3"], dtype="float32", max_length=8)
    long = " ".join(["the cat"] * 40)
    e.encode([long, "the"])
    assert e.last_stats["real_tokens"] == 8 + 2  # truncated, appended <|endoftext|> kept
    ids = e.tokenizer(long, truncation=True, max_length=8)["input_ids"]
    assert ids[-1] == e.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_encode_counts_truncated_texts_in_its_one_tokenizer_pass(base_dirs):
    e = Embedder.load(base_dirs["qwen3"], dtype="float32", max_length=8)
    texts = [" ".join(["the cat"] * 40), "the", "a b c d e f g", "the dog runs over the red car and the fox"]
    untruncated = e.tokenizer(texts)["input_ids"]  # the reference: a second pass without truncation
    e.encode(texts)
    assert e.last_stats["truncated"] == sum(len(x) > 8 for x in untruncated) == 2
    assert e.tokenize(texts) == e.tokenizer(texts, truncation=True, max_length=8)["input_ids"]


def test_bfloat16_close_to_float32(base_dirs):
    e32 = Embedder.load(base_dirs["qwen2"], dtype="float32", attention="bidirectional", pooling="mean")
    e16 = Embedder.load(base_dirs["qwen2"], dtype="bfloat16", attention="bidirectional", pooling="mean")
    assert e16.dtype == torch.bfloat16
    a, b = e32.encode(TEXTS), e16.encode(TEXTS)
    assert b.dtype == np.float32 and (a * b).sum(1).min() > 0.99


def test_token_budget_batches():
    lengths = [10, 9, 9, 5, 3, 3, 3, 1]
    batches = list(token_batches(list(range(8)), lengths, batch_tokens=20, max_batch_size=3))
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * lengths[b[0]] <= 20)
    assert batches[0] == [0, 1]
