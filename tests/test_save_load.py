"""Saved folders read the same under sentence-transformers, plain transformers + the documented pooling,
and qzhou itself (max abs difference <= 1e-5 in fp32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qzhou import Embedder

TEXTS = ["the quick brown fox", "a cat", "the dog runs over the lazy fox in paris", "blue"]
CASES = [("qwen2", "bidirectional", "mean"), ("qwen3", "causal", "last"), ("llama", "bidirectional", "last"),
         ("bert", "bidirectional", "cls")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(c))
def saved(request, base_dirs, tmp_path_factory):
    arch, attention, pooling = request.param
    e = Embedder.load(base_dirs[arch], dtype="float32", attention=attention, pooling=pooling)
    folder = e.save(tmp_path_factory.mktemp("saved") / arch)
    return e, folder


def test_sentence_transformers_reads_it(saved):
    from sentence_transformers import SentenceTransformer

    e, folder = saved
    st = SentenceTransformer(str(folder), device="cpu")
    for prompt in (None, "query"):
        ours = e.encode(TEXTS, prompt_name=prompt)
        theirs = st.encode(TEXTS, prompt_name=prompt, convert_to_numpy=True)
        assert np.abs(ours - theirs).max() <= 1e-5


def test_plain_automodel_with_documented_pooling(saved):
    from transformers import AutoModel, AutoTokenizer

    e, folder = saved
    config = json.loads((folder / "config.json").read_text())
    if e.config.attention == "bidirectional" and config["model_type"] != "bert":
        assert config["is_causal"] is False
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    mode = next(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
    model = AutoModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    feats = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**feats).last_hidden_state
    m = feats["attention_mask"]
    lens = m.sum(1)
    if mode == "pooling_mode_mean_tokens":
        out = (h * m[..., None]).sum(1) / lens[:, None]
    elif mode == "pooling_mode_lasttoken":  # left padding: the last position is always real
        assert tok.padding_side == "left"
        out = h[:, -1]
    else:
        out = h[torch.arange(len(TEXTS)), (m == 0).sum(1) if tok.padding_side == "left" else 0]
    ours = e.encode(TEXTS, convert_to="torch")
    assert (F.normalize(out, dim=-1) - ours).abs().max() <= 1e-5


def test_qzhou_reloads_the_same(saved):
    e, folder = saved
    again = Embedder.load(folder, dtype="float32")
    assert again.config == e.config
    np.testing.assert_allclose(again.encode(TEXTS), e.encode(TEXTS), atol=1e-6)


def test_prompts_written(saved):
    e, folder = saved
    cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert cfg["prompts"] == {"query": "Instruct: " + e.config.default_task + "\nQuery:", "document": ""}
    assert cfg["similarity_fn_name"] == "cosine"
