"""`qzhou mine` on a small corpus against a brute-force ranking, the false-negative guard and the indexes."""

from __future__ import annotations

import hashlib
import json
import math
import sys

import numpy as np
import pytest
from synth_helpers import qzhou, read_jsonl, write_jsonl

from qzhou.data.records import normalize_text
from qzhou.mining import Index, mine, parse_ranks

DIM = 16


class TopicEmbedder:
    """Texts "t<k> ..." lie near topic k's direction plus a per-text offset: well-separated, reproducible scores."""

    hidden_size = DIM

    def __init__(self):
        self.topics = np.random.default_rng(0).standard_normal((20, DIM))
        self.calls = []

    def encode(self, texts, prompt_name=None, instruction=None, **kw):
        self.calls.append((prompt_name, instruction, len(texts)))
        out = []
        for t in texts:
            topic = int(t.split()[0][1:])
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            v = self.topics[topic] + 0.8 * np.random.default_rng(seed).standard_normal(DIM)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def make_data(tmp_path):
    docs = [f"t{k} document {i}" for k in range(8) for i in range(12)]
    queries = [{"query": f"t{k} question {k}", "pos": [f"t{k} document 0"]} for k in range(8)]
    queries[1]["neg"] = ["t1 document 3"]  # an existing negative inside the corpus
    queries[2]["instruction"] = "Find the passage"
    docs.append("t3 question 3")  # a corpus text equal to a query
    docs.append("T0  Document 0")  # a copy of a text after normalisation: de-duplicated away
    docs[docs.index("t4 document 0")] = "t4 DOCUMENT  0"  # the corpus holds query 4's positive only in this form
    write_jsonl(tmp_path / "q.jsonl", queries)
    write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs])
    return queries, docs


def unit(rows):
    """Each row divided by its length, by a plain loop in float64 (the reference normalisation)."""
    return np.array([[x / math.sqrt(sum(float(v) ** 2 for v in row)) for x in row] for row in rows])


def brute_force(queries, docs, emb, lo, hi, margin, k=None):
    """The mining rules restated on a full numpy ranking of cosines (the reference). Queries are embedded in
    one call with the query prompt (the reference models ignore a record's instruction)."""
    keys = []
    for d in docs:  # the corpus is de-duplicated by normalised text, first kept
        if normalize_text(d) not in keys:
            keys.append(normalize_text(d))
    uniq = [next(d for d in docs if normalize_text(d) == key) for key in keys]
    D = unit(emb.encode(uniq, prompt_name="document"))
    vectors = dict(zip(keys, D))
    result = []
    for q, qv in zip(queries, unit(emb.encode([q["query"] for q in queries], prompt_name="query"))):
        scores = D @ qv
        order = np.argsort(-scores, kind="stable")
        pos_vectors = [vectors[normalize_text(p)] if normalize_text(p) in vectors else
                       unit(emb.encode([p], prompt_name="document"))[0] for p in q["pos"]]
        pos_score = min(float(v @ qv) for v in pos_vectors)
        pos_keys = {normalize_text(p) for p in q["pos"]}
        kept, reasons = [], {}
        for rank in range(lo, hi + 1):
            j = order[rank - 1]
            key = keys[j]
            if key in pos_keys:
                reasons[rank] = "positive"
            elif key == normalize_text(q["query"]):
                reasons[rank] = "query"
            elif key in {normalize_text(t) for t in q.get("neg", [])}:
                reasons[rank] = "existing"
            elif scores[j] > pos_score - margin:
                reasons[rank] = "margin"
            elif k is None or len(kept) < k:
                kept.append(uniq[j])
        result.append((kept, reasons))
    return result


@pytest.mark.parametrize("lo, hi, margin, k", [(1, 12, 0.05, None), (2, 20, -0.1, 4), (10, 30, 0.0, None)])
def test_mining_matches_brute_force(tmp_path, lo, hi, margin, k):
    queries, docs = make_data(tmp_path)
    emb = TopicEmbedder()
    summary = mine(tmp_path / "q.jsonl", tmp_path / "out.jsonl", emb, corpus=tmp_path / "c.jsonl",
                   ranks=(lo, hi), margin=margin, num_negatives=k, progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    report = read_jsonl(tmp_path / "out.jsonl.report.jsonl")
    expected = brute_force(queries, docs, emb, lo, hi, margin, k)
    for q, row, rep, (kept, reasons) in zip(queries, out, report, expected):
        assert row["neg"] == q.get("neg", []) + kept
        assert {d["rank"]: d["reason"] for d in rep["dropped"]} == reasons
        assert row["query"] == q["query"] and row["pos"] == q["pos"]
    assert summary["corpus_duplicates_dropped"] == 1
    assert summary["negatives_added"] == sum(len(kept) for kept, _ in expected)
    if lo == 1:  # the window starts at the top: positives and near-positives are found and dropped
        assert summary["dropped"]["positive"] >= len(queries) - 2 and summary["dropped"]["margin"] > 0
        assert {"existing", "query"} <= set(summary["dropped"])
    assert ("Find the passage" in [c[1] for c in emb.calls])  # a record's own instruction is used


class Unnormalised(TopicEmbedder):
    """TopicEmbedder's directions with lengths spread over two decades, as a model without a Normalize module."""

    def encode(self, texts, **kw):
        scale = [0.1 + 10 * (int(hashlib.sha256(t.encode()).hexdigest()[8:12], 16) / 65535) for t in texts]
        return super().encode(texts, **kw) * np.asarray(scale, dtype=np.float32)[:, None]


def test_mining_ranks_by_cosine_when_the_model_does_not_normalise(tmp_path):
    queries, docs = make_data(tmp_path)
    mine(tmp_path / "q.jsonl", tmp_path / "out.jsonl", Unnormalised(), corpus=tmp_path / "c.jsonl", ranks=(1, 12),
         margin=0.05, progress=False)
    out, report = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "out.jsonl.report.jsonl")
    expected = brute_force(queries, docs, TopicEmbedder(), 1, 12, 0.05)  # the same directions, unit length
    for q, row, rep, (kept, reasons) in zip(queries, out, report, expected):
        assert row["neg"] == q.get("neg", []) + kept
        assert {d["rank"]: d["reason"] for d in rep["dropped"]} == reasons
        assert -1 <= rep["pos_score"] <= 1


def test_mining_with_a_real_embedder_that_does_not_normalise(tmp_path, base_dirs):
    from qzhou import Embedder

    e = Embedder.load(base_dirs["bert"], dtype="float32", normalize=False)
    words = "cat dog fox bird fish tree house car road music art science math data river water".split()
    docs = [f"a {w} is near a {v} in the city" for w in words for v in words[::3]]
    queries = [{"query": f"the {w} and the {v}", "pos": [f"a {w} is near a {v} in the city"]}
               for w in words[:8] for v in words[::3][:3]]
    write_jsonl(tmp_path / "q.jsonl", queries)
    write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs])
    lengths = np.linalg.norm(e.encode(docs, prompt_name="document"), axis=1)
    assert lengths.min() > 2  # the model really does not normalise
    mine(tmp_path / "q.jsonl", tmp_path / "out.jsonl", e, corpus=tmp_path / "c.jsonl", ranks=(2, 12), margin=0.002,
         progress=False)
    out, report = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "out.jsonl.report.jsonl")
    expected = brute_force(queries, docs, e, 2, 12, 0.002)
    for row, rep, (kept, reasons) in zip(out, report, expected):
        assert row["neg"] == kept
        assert {d["rank"]: d["reason"] for d in rep["dropped"]} == reasons
    assert sum(len(kept) for kept, _ in expected) > 0 and any(r for _, r in expected)  # both rules exercised
    q, d = e.encode([q["query"] for q in queries], prompt_name="query"), e.encode(docs, prompt_name="document")
    by_dot = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, 1:12]
    by_cosine = np.argsort(-(unit(q) @ unit(d).T), axis=1, kind="stable")[:, 1:12]
    assert (by_dot != by_cosine).any()  # ranking the raw vectors would mine other negatives: this test can fail


def test_numpy_fallback_and_approximate_indexes_agree(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((2000, 32)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    q = corpus[:50] + 0.3 * rng.standard_normal((50, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ref_s, ref_i = Index(corpus, "exact").search(q, 30)
    brute = np.argsort(-(q @ corpus.T), axis=1, kind="stable")[:, :30]
    assert (ref_i == brute).mean() > 0.999
    for kind in ("hnsw", "ivf"):
        _, idx = Index(corpus, kind).search(q, 30)
        recall = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(idx, ref_i)])
        assert recall > 0.9, kind
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
    np_s, np_i = Index(corpus, "exact").search(q, 30)
    assert (np_i == ref_i).mean() > 0.999 and np.allclose(np_s, ref_s, atol=1e-5)
    with pytest.raises(ValueError, match=r"qzhou\[mine\]"):
        Index(corpus, "hnsw")


def test_mine_cli_with_a_real_tiny_embedder(tmp_path, base_dirs, capsys):
    from qzhou import Embedder

    folder = Embedder.load(base_dirs["bert"], dtype="float32").save(tmp_path / "emb")
    words = "cat dog fox bird fish tree house car road music art science math data river water".split()
    rows = [{"query": f"the {w} and the {v}", "pos": [f"a {w} is near a {v} in the city"]}
            for w in words[:8] for v in words[8:11]]
    write_jsonl(tmp_path / "q.jsonl", rows)
    assert qzhou(["mine", "--model", folder, "--queries", tmp_path / "q.jsonl", "--output", tmp_path / "m.jsonl",
                  "--ranks", "2-6", "--margin", "-1", "--quiet"]) == 0  # corpus: the positives
    summary = json.loads(capsys.readouterr().out)
    assert summary["corpus"] == 24 and summary["queries"] == 24
    out = read_jsonl(tmp_path / "m.jsonl")
    for r in out:  # margin -1 drops nothing by score: every window slot is a negative or its own positive
        assert r["pos"][0] not in r["neg"] and 4 <= len(r["neg"]) <= 5
    assert qzhou(["mine", "--model", folder, "--queries", tmp_path / "q.jsonl", "--output", tmp_path / "x.jsonl",
                  "--ranks", "30-10"]) == 2
    assert "--ranks needs 1 <= FIRST <= LAST" in capsys.readouterr().err


def test_parse_ranks():
    assert parse_ranks("10-30") == (10, 30) and parse_ranks("5") == (5, 5)
    for bad in ("0-3", "a-b", "9-2"):
        with pytest.raises(ValueError):
            parse_ranks(bad)


def test_judge_window_on_hand_made_hits():
    from collections import Counter

    from qzhou.mining import judge_window

    texts = ["the answer", "A  copy", "a copy", "the question", "old negative", "far away", "also far"]
    record = {"query": "The question", "pos": ["the answer"], "neg": ["old negative"]}
    idx = np.array([0, 1, 2, 3, 4, 5, 6, -1])  # best first; -1: the index found no more
    scores = np.array([0.9, 0.5, 0.5, 0.45, 0.4, 0.3, 0.2, 0.0])
    stats = Counter()
    kept, dropped = judge_window(record, 0.9, scores, idx, texts, (1, 10), 0.35, None, stats,
                                 ids=[f"d{j}" for j in range(7)])
    assert [(d["rank"], d["id"], d["reason"]) for d in dropped] == [
        (1, "d0", "positive"), (3, "d2", "duplicate"), (4, "d3", "query"), (5, "d4", "existing")]
    assert [(k["rank"], k["id"], k["text"], k["score"]) for k in kept] == [
        (2, "d1", "A  copy", 0.5), (6, "d5", "far away", 0.3), (7, "d6", "also far", 0.2)]
    assert stats == Counter(positive=1, duplicate=1, query=1, existing=1)
    kept, dropped = judge_window(record, 0.9, scores, idx, texts, (2, 7), 0.41, 1, Counter())
    assert [k["text"] for k in kept] == ["far away"] and "id" not in kept[0]  # 0.5 > 0.9 - 0.41: margin
    assert [d["reason"] for d in dropped] == ["margin", "margin", "query", "existing"]
