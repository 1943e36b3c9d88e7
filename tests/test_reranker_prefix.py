"""Reranker.score through the prefix KV cache (`reranking.prefix_cache`) against the plain forward and against the
full-vocabulary reference of test_reranker: same scores (fp32, 1e-5) over several queries and instructions, mixed
pair order, padding sides, batch sizes, truncation, one pair; the token budget counting the prefix; the plan; and
the fallback for models the prefix path cannot serve."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reranker_support import write_causal
from test_reranker import PAIRS, reference

from qzhou import Reranker
from qzhou.reranking import prefix_cache as pc

QUERIES = ["what is the capital of France?", "quick fox", "a", "music and art"]
DOCS = [d for _, d in PAIRS]


def mixed_pairs(seed: int = 0) -> list[tuple[str, str]]:
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    random.Random(seed).shuffle(pairs)  # a query's documents are not contiguous: output order = input order
    return pairs


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return write_causal(tmp_path_factory.mktemp("rrp") / "qwen3")


@pytest.fixture(scope="module")
def reranker(qwen3_dir):
    return Reranker.load(qwen3_dir, dtype="float32", device="cpu")


def both(reranker, pairs, **kw) -> tuple[np.ndarray, np.ndarray]:
    plain = reranker.score(pairs, prefix_cache=False, **kw)
    assert reranker.last_stats["reused_tokens"] == 0
    cached = reranker.score(pairs, **kw)
    return plain, cached


def test_prefix_path_equals_plain_and_reference(reranker, qwen3_dir):
    pairs = mixed_pairs()
    plain, cached = both(reranker, pairs)
    stats = reranker.last_stats
    assert stats["reused_tokens"] > stats["prompt_tokens"] // 3  # the path ran and skipped the shared prompt parts
    assert stats["real_tokens"] + stats["reused_tokens"] == stats["prompt_tokens"]
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    np.testing.assert_allclose(cached, reference(qwen3_dir, reranker.tokenizer, pairs), atol=1e-5)
    assert cached.std() > 1e-3


def test_log_odds_match(reranker):
    pairs = mixed_pairs(1)
    _, z_plain = reranker.score(pairs, return_logits=True, prefix_cache=False)
    _, z_cached = reranker.score(pairs, return_logits=True)
    np.testing.assert_allclose(z_cached, z_plain, atol=1e-4)


@pytest.mark.parametrize("task", ["Given a question, retrieve answers", "Find the passage a student would cite"])
def test_instructions(reranker, qwen3_dir, task):
    pairs = mixed_pairs(2)[:10]
    plain, cached = both(reranker, pairs, instruction=task)
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    np.testing.assert_allclose(cached, reference(qwen3_dir, reranker.tokenizer, pairs, task), atol=1e-5)


def test_padding_side_does_not_matter(reranker):
    pairs = mixed_pairs(3)
    left = reranker.score(pairs)
    reranker.padding_side = "right"
    try:
        right_plain, right_cached = both(reranker, pairs)
    finally:
        reranker.padding_side = "left"
    np.testing.assert_allclose(right_cached, left, atol=1e-5)
    np.testing.assert_allclose(right_plain, left, atol=1e-5)


def test_batched_equals_one_by_one(reranker):
    pairs = mixed_pairs(4)
    together = reranker.score(pairs, batch_tokens=1 << 20)
    one_row_batches = reranker.score(pairs, batch_tokens=1)  # each document alone against its query's cache
    alone = np.concatenate([reranker.score([p], prefix_cache=False) for p in pairs])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(one_row_batches, alone, atol=1e-5)


def test_truncated_documents(reranker):
    long_doc = "The quick brown fox jumps over the lazy dog number " + " ".join(str(i) for i in range(300))
    pairs = [(q, d) for q in QUERIES[:2] for d in (long_doc, long_doc + " more", DOCS[0])]
    old = reranker.max_length
    reranker.max_length = 160
    try:
        assert max(len(x) for x in reranker.format_pairs(pairs)) == 160  # the long ones are cut
        plain, cached = both(reranker, pairs)
        assert reranker.last_stats["reused_tokens"] > 0
    finally:
        reranker.max_length = old
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_one_pair(reranker, qwen3_dir):
    """One pair shares nothing, so score runs the plain forward; forced through the prefix path it agrees."""
    pair = [PAIRS[0]]
    p = reranker.score(pair)
    assert reranker.last_stats["reused_tokens"] == 0
    ids, starts = reranker.prompt_ids(pair, None, None)
    root, groups = pc.plan(ids, starts, [pair[0][0]])
    bar = SimpleNamespace(update=lambda n: None)
    with torch.inference_mode():
        z, stats = pc.score_with_prefixes(reranker.decoder, reranker.head, ids, root, groups,
                                          pad_id=reranker.tokenizer.pad_token_id, device=reranker.device,
                                          batch_tokens=16384, max_batch_size=8, bar=bar)
    assert stats["real_tokens"] == len(ids[0])
    np.testing.assert_allclose(torch.sigmoid(z[:, 1] - z[:, 0]).numpy(), p, atol=1e-5)
    np.testing.assert_allclose(p, reference(qwen3_dir, reranker.tokenizer, pair), atol=1e-5)


def test_batches_count_the_prefix_in_the_budget(reranker, monkeypatch):
    seen = []
    original = pc.continue_batch

    def spy(decoder, prefixes, which, rows, pad_id, device):
        past = prefixes.kv[0][0].shape[2] if prefixes.kv else 0
        seen.append((len(rows), past + max(len(r) for r in rows), [len(r) for r in rows]))
        return original(decoder, prefixes, which, rows, pad_id, device)

    monkeypatch.setattr(pc, "continue_batch", spy)
    pairs = mixed_pairs(5) * 3
    plain = reranker.score(pairs, prefix_cache=False)
    cached = reranker.score(pairs, batch_tokens=700)
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    assert sum(b for b, _, _ in seen) == len(pairs)
    assert all(b * width <= 700 or b == 1 for b, width, _ in seen)
    assert all(lengths == sorted(lengths, reverse=True) for _, _, lengths in seen)  # longest first


def test_eager_attention_and_llama(tmp_path):
    pairs = mixed_pairs(6)[:12]
    for folder, attn in ((write_causal(tmp_path / "llama", arch="llama", seed=2), "sdpa"),
                         (write_causal(tmp_path / "qwen3", seed=3), "eager")):
        r = Reranker.load(folder, dtype="float32", attn_implementation=attn)
        plain, cached = both(r, pairs)
        assert r.last_stats["reused_tokens"] > 0
        np.testing.assert_allclose(cached, plain, atol=1e-5)
        np.testing.assert_allclose(cached, reference(folder, r.tokenizer, pairs), atol=1e-5)


def test_plan_groups_by_query_and_shares_only_equal_ids():
    ids = [[1, 2, 3, 4, 9, 9], [1, 2, 5, 6, 7], [1, 2, 3, 4, 8], [1, 2, 3, 7, 8], [1, 2, 5, 6]]
    starts = [4, 4, 4, 4, 4]
    queries = ["x", "y", "x", "x", "z"]
    root, groups = pc.plan(ids, starts, queries)
    assert groups == {(1, 2, 3): [0, 2, 3], (1, 2, 5, 6): [1], (1, 2, 5): [4]}  # "z" keeps one token to run
    assert root == [1, 2]
    for key, rows in groups.items():
        assert all(list(ids[i][:len(key)]) == list(key) and len(ids[i]) > len(key) for i in rows)
    # computed: root 2 + group extensions (1 + 2 + 1) + continuations (3 + 2 + 2 + 1 + 1)
    assert pc.reused_tokens(ids, root, groups) == sum(map(len, ids)) - (2 + 4 + 9)


def test_unsupported_models_fall_back(reranker, monkeypatch):
    from transformers import Qwen3Config

    sliding = Qwen3Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert "sliding" in pc.supports_prefix_cache(SimpleNamespace(config=sliding))
    flash = Qwen3Config(num_hidden_layers=2)
    flash._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in pc.supports_prefix_cache(SimpleNamespace(config=flash))
    assert pc.supports_prefix_cache(reranker.causal_lm) is None

    pairs = mixed_pairs(7)[:8]
    expected = reranker.score(pairs, prefix_cache=False)
    monkeypatch.setattr(pc, "supports_prefix_cache", lambda model: "sliding window attention")
    np.testing.assert_allclose(reranker.score(pairs), expected, atol=1e-6)
    assert reranker.last_stats["reused_tokens"] == 0


def test_training_forward_is_unchanged(reranker):
    """`Reranker.forward` (the trainer's) still scores padded full prompts, as the cached path does."""
    pairs = mixed_pairs(8)[:6]
    z = reranker(*reranker.pad(reranker.format_pairs(pairs)))
    cached = reranker.score(pairs)
    np.testing.assert_allclose(torch.sigmoid(z[:, 1] - z[:, 0]).detach().numpy(), cached, atol=1e-5)
