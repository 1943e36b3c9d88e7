"""`qzhou rerank`, `qzhou export-seq-cls` and `qzhou convert --reranker` against the library they call."""

from __future__ import annotations

import json

import numpy as np
import pytest
from reranker_support import write_causal

from qzhou import Reranker
from qzhou.cli import main

DOCS = ["Paris is the capital and largest city of France.", "The quick brown fox jumps over the lazy dog.",
        "A cat sleeps in the house by the river.", "Music, art, science and math."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_causal(tmp_path_factory.mktemp("rrc") / "qwen3")


def test_rerank_writes_ranked_jsonl(model_dir, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    out = tmp_path / "ranked.jsonl"
    assert main(["rerank", str(model_dir), "--query", "capital of France", "--input", str(src), "--output", str(out),
                 "--top-k", "3", "--dtype", "float32", "--quiet"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    expected = Reranker.load(model_dir, dtype="float32").rank("capital of France", DOCS, top_k=3)
    assert [r["index"] for r in rows] == [e["index"] for e in expected]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["id"] == f"d{r['index']}" and r["text"] == DOCS[r["index"]] for r in rows)
    np.testing.assert_allclose([r["score"] for r in rows], [e["score"] for e in expected], atol=1e-6)


def test_rerank_bad_input_is_one_line(model_dir, tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": ""}) + "\n")
    assert main(["rerank", str(model_dir), "--query", "q", "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "docs.jsonl:2" in err and "'text'" in err and "empty" in err
    assert main(["rerank", str(model_dir), "--query", "q", "--input", str(src), "--output", str(tmp_path / "o.csv")]) == 2
    assert ".jsonl" in capsys.readouterr().err


def test_export_seq_cls_and_convert(model_dir, tmp_path, capsys):
    from sentence_transformers.cross_encoder import CrossEncoder

    seq = tmp_path / "seq"
    assert main(["export-seq-cls", str(model_dir), str(seq), "--dtype", "float32"]) == 0
    assert "--chat-template" in capsys.readouterr().out
    assert (seq / "qwen3_reranker.jinja").is_file()
    conv = tmp_path / "conv"
    assert main(["convert", str(model_dir), str(conv), "--reranker", "--max-length", "512", "--dtype", "float32"]) == 0
    pairs = [("capital of France", d) for d in DOCS]
    ref = Reranker.load(model_dir, dtype="float32").score(pairs)
    np.testing.assert_allclose(CrossEncoder(str(conv), device="cpu").predict(pairs), ref, atol=1e-5)
    np.testing.assert_allclose(CrossEncoder(str(seq), device="cpu").predict(pairs), ref, atol=1e-5)
    assert Reranker.load(conv).max_length == 512
    assert main(["convert", str(model_dir), str(conv), "--reranker", "--pooling", "mean"]) == 2
