"""Reranker.score against a reference written here: the Qwen3-Reranker prompt built by hand, full-vocabulary logits
from the CausalLM forward, softmax over [no, yes]. Plus batching, padding sides, truncation and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reranker_support import make_bpe_tokenizer, write_causal

from qzhou import Reranker

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')
WEB = "Given a web search query, retrieve relevant passages that answer the query"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
PAIRS = [
    ("what is the capital of France?", "Paris is the capital and largest city of France."),
    ("quick fox", "The quick brown fox jumps over the lazy dog."),
    ("a", "b"),
    ("music and art", "Music, art, science and math: data helps us learn about water, trees and roads. " * 6),
    ("dog", "A cat sleeps in the house by the river."),
]


def prompt(query: str, doc: str, instruction: str = WEB) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
            f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" + SUFFIX)


def reference(folder, tokenizer, pairs, instruction=WEB) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    out = []
    for q, d in pairs:
        ids = tokenizer(prompt(q, d, instruction), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]  # the whole vocabulary
        out.append(torch.softmax(logits[[no, yes]], dim=0)[1].item())
    return np.array(out)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return write_causal(tmp_path_factory.mktemp("rr") / "qwen3")


@pytest.fixture(scope="module")
def reranker(qwen3_dir):
    return Reranker.load(qwen3_dir, dtype="float32", device="cpu")


def test_score_equals_reference(reranker, qwen3_dir):
    p, z = reranker.score(PAIRS, return_logits=True)
    ref = reference(qwen3_dir, reranker.tokenizer, PAIRS)
    np.testing.assert_allclose(p, ref, atol=1e-5)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), atol=1e-6)
    assert p.std() > 1e-3  # the pairs score differently, so the check can fail


def test_instruction_changes_the_prompt(reranker, qwen3_dir):
    task = "Given a question, retrieve answers"
    p = reranker.score(PAIRS[:2], instruction=task)
    np.testing.assert_allclose(p, reference(qwen3_dir, reranker.tokenizer, PAIRS[:2], task), atol=1e-5)
    assert not np.allclose(p, reranker.score(PAIRS[:2]), atol=1e-6)


def test_format_pairs_is_the_hand_built_prompt(reranker):
    ids = reranker.format_pairs(PAIRS)
    for (q, d), row in zip(PAIRS, ids):
        assert row == reranker.tokenizer(prompt(q, d), add_special_tokens=False)["input_ids"]


def test_tied_llama_without_lm_head_file(tmp_path):
    folder = write_causal(tmp_path / "llama", arch="llama", tie=True, seed=1)
    r = Reranker.load(folder, dtype="float32")
    np.testing.assert_allclose(r.score(PAIRS), reference(folder, r.tokenizer, PAIRS), atol=1e-5)


def test_batched_equals_one_by_one(reranker):
    together = reranker.score(PAIRS, batch_tokens=1 << 20)
    alone = np.concatenate([reranker.score([p], batch_tokens=1) for p in PAIRS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_left_and_right_padding_agree(reranker):
    left = reranker.score(PAIRS)
    reranker.padding_side = "right"
    try:
        right = reranker.score(PAIRS)
    finally:
        reranker.padding_side = "left"
    np.testing.assert_allclose(left, right, atol=1e-5)


def test_batches_stay_within_the_token_budget(reranker, monkeypatch):
    shapes = []
    forward = Reranker.forward

    def spy(self, input_ids, attention_mask):
        shapes.append(tuple(input_ids.shape))
        return forward(self, input_ids, attention_mask)

    monkeypatch.setattr(Reranker, "forward", spy)
    pairs = PAIRS * 8
    reranker.score(pairs, batch_tokens=600, prefix_cache=False)  # the plain path (test_reranker_prefix: the other)
    assert sum(s[0] for s in shapes) == len(pairs)
    assert all(b * w <= 600 or b == 1 for b, w in shapes)
    widths = [w for _, w in shapes]
    assert widths == sorted(widths, reverse=True)  # longest first


def test_rank_orders_by_log_odds(reranker):
    docs = [d for _, d in PAIRS]
    ranked = reranker.rank("quick fox", docs)
    p, z = reranker.score([("quick fox", d) for d in docs], return_logits=True)
    assert [r["index"] for r in ranked] == list(np.argsort(-z, kind="stable"))
    assert [r["score"] for r in ranked] == pytest.approx(sorted(p, reverse=True), abs=1e-6)
    assert len(reranker.rank("quick fox", docs, top_k=2)) == 2


# ------------------------------------------------------------------------------------------------ truncation
def suffix_ids(tok) -> list[int]:
    return tok(SUFFIX, add_special_tokens=False)["input_ids"]


def test_long_document_keeps_the_suffix(reranker, qwen3_dir):
    """A 10k-token document under the default max length 8192: the prompt is cut to exactly 8192 tokens, only in
    the document, and still ends with the assistant turn; it scores as the hand-truncated prompt does."""
    tok = reranker.tokenizer
    doc = "The quick brown fox jumps over the lazy dog number " + " ".join(str(i) for i in range(4000))
    assert len(tok(doc, add_special_tokens=False)["input_ids"]) > 10_000
    assert reranker.max_length == 8192
    (ids,) = reranker.format_pairs([("quick fox", doc)])
    assert len(ids) == 8192
    suffix = suffix_ids(tok)
    assert ids[-len(suffix):] == suffix
    full = tok(prompt("quick fox", doc), add_special_tokens=False)["input_ids"]
    assert ids == full[:8192 - len(suffix)] + suffix  # sentence-transformers' cut-and-restore gives the same
    text = tok.decode(ids)
    assert text.startswith(prompt("quick fox", "")[:-len(SUFFIX)]) and text.endswith(SUFFIX)


def test_million_character_document_is_truncated(reranker):
    tok = reranker.tokenizer
    doc = "Paris is the capital and largest city of France. " * 20_500  # over 1M characters
    assert len(doc) >= 1_000_000
    old = reranker.max_length
    reranker.max_length = 300
    try:
        (ids,) = reranker.format_pairs([("capital", doc)])
        p = reranker.score([("capital", doc)])
    finally:
        reranker.max_length = old
    full = tok(prompt("capital", doc[:20_000]), add_special_tokens=False)["input_ids"]  # enough document tokens
    suffix = suffix_ids(tok)
    assert ids == full[:300 - len(suffix)] + suffix
    assert 0.0 < float(p[0]) < 1.0


def test_precut_too_short_falls_back_to_the_whole_document(reranker, monkeypatch):
    """When the characters kept before tokenizing hold too few tokens (here: 1 character per token assumed), the
    whole document is tokenized and the result is the same exact cut."""
    import qzhou.reranking.model as model_module

    monkeypatch.setattr(model_module, "_CHARS_PER_TOKEN_CUT", 1)
    tok = reranker.tokenizer
    doc = "The quick brown fox jumps over the lazy dog. " * 40
    old = reranker.max_length
    reranker.max_length = 200
    try:
        (ids,) = reranker.format_pairs([("q", doc)])
    finally:
        reranker.max_length = old
    full = tok(prompt("q", doc), add_special_tokens=False)["input_ids"]
    suffix = suffix_ids(tok)
    assert len(full) > 200 and ids == full[:200 - len(suffix)] + suffix


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("pair, match", [(("", "doc"), "pair 0: the query is empty"),
                                         (("q", "   "), "pair 0: the document is empty")])
def test_empty_text_is_a_clear_error(reranker, pair, match):
    with pytest.raises(ValueError, match=match):
        reranker.score([pair])


def test_bad_pair_shapes(reranker):
    with pytest.raises(TypeError, match="wrap a single pair in a list"):
        reranker.score(("q", "d"))
    with pytest.raises(TypeError, match="pair 1"):
        reranker.score([("q", "d"), ("q",)])
    with pytest.raises(TypeError, match="not one string"):
        reranker.rank("q", "one string")


def test_query_longer_than_max_length(reranker):
    old = reranker.max_length
    reranker.max_length = 64
    try:
        with pytest.raises(ValueError, match="no room for the document.*max_length=64"):
            reranker.score([("fox " * 50, "dog")])
    finally:
        reranker.max_length = old


def test_tokenizer_without_yes_no_tokens(tmp_path, qwen3_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tokenizer  # word-level, no "yes" / "no" in its vocabulary

    from qzhou.reranking.model import load_causal_lm

    model = load_causal_lm(qwen3_dir, None, torch.float32)
    with pytest.raises(ValueError, match="'yes' as one token"):
        Reranker(model, make_tokenizer(), Reranker.load(qwen3_dir, dtype="float32").config)


def test_encoder_is_refused(base_dirs):
    with pytest.raises(ValueError, match="encoder"):
        Reranker.load(base_dirs["bert"], dtype="float32")


def test_bare_backbone_without_head_is_refused(base_dirs):
    with pytest.raises(ValueError, match="no lm_head"):
        Reranker.load(base_dirs["qwen3"], dtype="float32")


def test_template_source(tmp_path):
    """A tokenizer whose chat template renders the Qwen3 markup (as Qwen3's does with thinking off) is used as is;
    the test tokenizer has none, so the markup is written out."""
    from qzhou.reranking.template import RerankerConfig, tokenizer_renders_qwen3

    tok = make_bpe_tokenizer()
    config = RerankerConfig()
    assert not tokenizer_renders_qwen3(tok, config)
    tok.chat_template = ("{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                         "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                         "{%- if enable_thinking is defined and enable_thinking is false %}"
                         "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")
    assert tokenizer_renders_qwen3(tok, config)
    tok.chat_template = tok.chat_template.replace("<think>", "<reason>")
    assert not tokenizer_renders_qwen3(tok, config)
