"""Published layouts (QZhou-Embedding, gte-Qwen2, Qwen3-Embedding) load without remote code and match an
independent reference: eager attention with an explicit padding-only 4-D mask, a hand-written mean over the
real tokens, or the state at the appended <|endoftext|>."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import edit_json, make_tokenizer, write_base

from qzhou import Embedder

TEXTS = ["the quick brown fox jumps over the lazy dog", "a cat", "paris is the capital city of france"]
QWEN3_QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def qzhou_layout(root: Path) -> Path:
    d = write_base(root / "qzhou", "qwen2")
    edit_json(d / "config.json", architectures=["QZhouModel"], auto_map={"AutoModel": "modeling_qzhou.QZhouModel"})
    return d


def gte_layout(root: Path) -> Path:
    d = write_base(root / "gte", "qwen2")
    edit_json(d / "config.json", is_causal=False, auto_map={"AutoModel": "modeling_qwen.Qwen2Model"})
    return d


def qwen3_layout(root: Path, tokenizer_appends: bool = True) -> Path:
    d = write_base(root / f"qwen3-{tokenizer_appends}", "qwen3")
    if tokenizer_appends:  # the current Qwen3-Embedding tokenizer appends <|endoftext|> itself
        from tokenizers import processors

        tok = make_tokenizer()
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A $B <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])
        tok.save_pretrained(d)
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
         "pooling_mode_max_tokens": False, "pooling_mode_lasttoken": True}))
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": QWEN3_QUERY, "document": ""}}))
    return d


def reference(folder: Path, texts: list[str], pooling: str, bidirectional: bool) -> torch.Tensor:
    """Independent of qzhou: plain transformers tokenization without special tokens, <|endoftext|> appended by
    hand, right padding, an explicit 4-D additive mask, eager attention."""
    from transformers import AutoTokenizer, Qwen2Model, Qwen3Model

    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    cls = {"qwen2": Qwen2Model, "qwen3": Qwen3Model}[model_type]
    model = cls.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    rows = [tok(t, add_special_tokens=False)["input_ids"] + ([eot] if pooling == "last" else []) for t in texts]
    L = max(map(len, rows))
    ids = torch.tensor([r + [eot] * (L - len(r)) for r in rows])
    lengths = [len(r) for r in rows]
    neg = torch.finfo(torch.float32).min
    mask4 = torch.zeros(len(rows), 1, L, L)
    for b, n in enumerate(lengths):
        mask4[b, 0, :, n:] = neg  # padded keys
        if not bidirectional:
            mask4[b, 0] += torch.triu(torch.full((L, L), neg), diagonal=1)
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask4).last_hidden_state
    if pooling == "mean":
        out = torch.stack([h[b, :n].sum(0) / n for b, n in enumerate(lengths)])
    else:
        out = torch.stack([h[b, n - 1] for b, n in enumerate(lengths)])
    return F.normalize(out, dim=-1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("layouts")


def test_qzhou_layout(root):
    d = qzhou_layout(root)
    e = Embedder.load(d, dtype="float32")
    assert (e.config.attention, e.config.pooling, e.config.padding_side) == ("bidirectional", "mean", "left")
    assert type(e.backbone).__name__ == "Qwen2Model"
    got = e.encode(TEXTS, convert_to="torch")
    assert torch.allclose(got, reference(d, TEXTS, "mean", bidirectional=True), atol=1e-5)


def test_gte_qwen2_layout(root):
    d = gte_layout(root)
    e = Embedder.load(d, dtype="float32")
    assert (e.config.attention, e.config.pooling) == ("bidirectional", "last")
    got = e.encode(TEXTS, convert_to="torch")
    assert torch.allclose(got, reference(d, TEXTS, "last", bidirectional=True), atol=1e-5)


@pytest.mark.parametrize("tokenizer_appends", [True, False])
def test_qwen3_embedding_layout(root, tokenizer_appends):
    d = qwen3_layout(root, tokenizer_appends)
    e = Embedder.load(d, dtype="float32")
    assert (e.config.attention, e.config.pooling, e.config.append_token) == ("causal", "last", "<|endoftext|>")
    assert e.config.prompts()["query"] == QWEN3_QUERY
    ids = e.tokenizer("a cat")["input_ids"]
    eot = e.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ids[-1] == eot != e.tokenizer.eos_token_id  # pooled at <|endoftext|>, not at eos_token <|im_end|>
    assert ids.count(eot) == 1  # appended once, whether or not the tokenizer already did
    got = e.encode(TEXTS, convert_to="torch")
    assert torch.allclose(got, reference(d, TEXTS, "last", bidirectional=False), atol=1e-5)
    q = e.encode(TEXTS[:1], prompt_name="query", convert_to="torch")
    assert torch.allclose(q, reference(d, [QWEN3_QUERY + TEXTS[0]], "last", bidirectional=False), atol=1e-5)


def test_no_remote_code_is_ever_imported(root):
    d = qzhou_layout(root)
    (d / "modeling_qzhou.py").write_text("raise RuntimeError('remote code was executed')\n")
    Embedder.load(d, dtype="float32")  # would raise if auto_map were followed


def test_overrides_win_over_detection(root):
    d = qzhou_layout(root)
    e = Embedder.load(d, dtype="float32", attention="causal", pooling="last")
    assert (e.config.attention, e.config.pooling, e.config.append_token) == ("causal", "last", "<|endoftext|>")
    got = e.encode(TEXTS, convert_to="torch")
    assert torch.allclose(got, reference(d, TEXTS, "last", bidirectional=False), atol=1e-5)
