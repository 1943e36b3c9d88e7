"""Exports score exactly as Reranker.score (fp32, 1e-5): the sentence-transformers CrossEncoder layout (read by
CrossEncoder and by Reranker.load), and the one-label seq-cls copy (transformers, CrossEncoder, vLLM's template)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reranker_support import write_causal

from qzhou import Reranker
from qzhou.reranking.export import VLLM_TEMPLATE, export_seq_cls

PAIRS = [
    ("what is the capital of France?", "Paris is the capital and largest city of France."),
    ("quick fox", "The quick brown fox jumps over the lazy dog."),
    ("a", "b"),
    ("dog", "A cat sleeps in the house by the river. " * 40),  # longer than max_length 200: truncated
]


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    folder = write_causal(tmp_path_factory.mktemp("rrx") / "qwen3")
    return Reranker.load(folder, dtype="float32", max_length=200)


@pytest.fixture(scope="module")
def saved(reranker, tmp_path_factory):
    return reranker.save(tmp_path_factory.mktemp("rrx") / "saved")


@pytest.fixture(scope="module")
def seq_cls(reranker, tmp_path_factory):
    return export_seq_cls(reranker, tmp_path_factory.mktemp("rrx") / "seqcls")


def test_cross_encoder_gives_the_same_scores(reranker, saved):
    from sentence_transformers.cross_encoder import CrossEncoder

    assert len(reranker.format_pairs(PAIRS)[-1]) == 200  # the last pair is truncated by both
    ce = CrossEncoder(str(saved), device="cpu")
    np.testing.assert_allclose(ce.predict(PAIRS), reranker.score(PAIRS), atol=1e-5)
    task = "Given a question, retrieve answers"
    np.testing.assert_allclose(ce.predict(PAIRS, prompt=task), reranker.score(PAIRS, instruction=task), atol=1e-5)
    raw = ce.predict(PAIRS, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(raw, reranker.score(PAIRS, return_logits=True)[1], atol=1e-4)


def test_saved_folder_reloads(reranker, saved):
    again = Reranker.load(saved, dtype="float32")
    assert again.max_length == 200 and again.config == reranker.config
    np.testing.assert_allclose(again.score(PAIRS), reranker.score(PAIRS), atol=1e-6)
    layout = json.loads((saved / "1_LogitScore" / "config.json").read_text())
    assert (layout["true_token_id"], layout["false_token_id"]) == (reranker.yes_id, reranker.no_id)


def test_seq_cls_weight_is_yes_minus_no(reranker, seq_cls):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(seq_cls, dtype=torch.float32).eval()
    assert model.config.num_labels == 1 and type(model).__name__ == "Qwen3ForSequenceClassification"
    w = reranker.model.lm_head.weight
    torch.testing.assert_close(model.score.weight[0], w[reranker.yes_id] - w[reranker.no_id])
    input_ids, mask = reranker.pad(reranker.format_pairs(PAIRS))
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, 0]
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), reranker.score(PAIRS), atol=1e-5)


def test_seq_cls_through_cross_encoder(reranker, seq_cls):
    from sentence_transformers.cross_encoder import CrossEncoder

    ce = CrossEncoder(str(seq_cls), device="cpu")
    np.testing.assert_allclose(ce.predict(PAIRS), reranker.score(PAIRS), atol=1e-5)


def test_vllm_template_renders_the_exact_prompt(reranker, seq_cls):
    """vLLM's score API renders a pair as messages with roles query / document (and system for the instruction)
    through --chat-template; the shipped template must give token for token the prompt Reranker.score uses."""
    template = (seq_cls / VLLM_TEMPLATE).read_text()
    tok = reranker.tokenizer
    for q, d in PAIRS[:3]:
        messages = [{"role": "query", "content": q}, {"role": "document", "content": d}]
        text = tok.apply_chat_template(messages, chat_template=template, tokenize=False)
        assert text == reranker.config.render(q, d)[0]
        with_system = tok.apply_chat_template([{"role": "system", "content": "Find answers"}] + messages,
                                              chat_template=template, tokenize=False)
        assert with_system == reranker.config.render(q, d, "Find answers")[0]
        kwarg = tok.apply_chat_template(messages, chat_template=template, tokenize=False, instruction="Other")
        assert kwarg == reranker.config.render(q, d, "Other")[0]


def test_instruction_with_quotes_and_braces_survives(reranker, tmp_path):
    """The Jinja template carries the texts as escaped literals: quotes, braces and newlines stay exact."""
    from qzhou.reranking.template import RerankerConfig, chat_template

    config = RerankerConfig(instruction='Say "yes" {when} it\'s \\ relevant\n{{ x }}')
    template = chat_template(config)
    messages = [{"role": "query", "content": "q"}, {"role": "document", "content": "d"}]
    assert reranker.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False) == \
        config.render("q", "d")[0]
