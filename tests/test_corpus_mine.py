"""Mining over an embeddings folder: the same negatives as the in-memory `qzhou mine`, exact search over shards
against a full sort, IVF-PQ recall against exact search on 200k generated vectors, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS
from synth_helpers import read_jsonl, write_jsonl

from qzhou import Embedder
from qzhou.cli import main
from qzhou.corpus import CorpusJob, EncodeSettings, encode_corpus
from qzhou.corpus.index import ShardIndex, choose_index, pq_subquantizers
from qzhou.corpus.mine import mine_corpus
from qzhou.corpus.shards import write_shard
from qzhou.mining import mine


def clustered(n: int, d: int, rng, centers: int = 1000) -> np.ndarray:
    """Points around `centers` random directions: neighbourhoods like real embeddings have (uniform noise in
    high dimensions has no near neighbours to find)."""
    c = rng.standard_normal((centers, d)).astype(np.float32)
    return c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)


def write_vectors(folder: Path, x: np.ndarray, sizes: list[int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names, start = [], 0
    for i, size in enumerate(sizes):
        names.append(f"part{i}.parquet")
        write_shard(folder / names[-1], [str(j) for j in range(start, start + size)], x[start:start + size])
        start += size
    assert start == len(x)
    return names


def brute_force(q: np.ndarray, x: np.ndarray, k: int):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    scores = qn @ xn.T  # (Q, N)
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k] if len(x) < 10_000 else \
        np.argpartition(-scores, k, axis=1)[:, :k]  # large corpora: the top-k set (unordered) is enough
    return np.take_along_axis(scores, idx, axis=1), idx


def test_exact_over_uneven_shards_equals_a_full_sort(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    x[2500] = x[10]  # a tie across shards: the lower global row must come first, as in a stable sort
    names = write_vectors(tmp_path, x, [1000, 7, 1493, 500])
    q = np.concatenate([rng.standard_normal((19, 24)).astype(np.float32), x[10:11]])
    scores, idx = ShardIndex(tmp_path, names, 3000, 24, "exact").search(q, 50)
    want_s, want_i = brute_force(q, x, 50)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    assert list(idx[-1, :2]) == [10, 2500]


def test_ivfpq_recall_at_100_vs_exact_on_200k_vectors(tmp_path):
    rng = np.random.default_rng(0)
    x = clustered(200_000, 16, rng)
    names = write_vectors(tmp_path, x, [50_000] * 4)
    index = ShardIndex(tmp_path, names, 200_000, 16, "ivfpq", progress=False)
    q = x[rng.choice(200_000, 100, replace=False)] + 0.3 * rng.standard_normal((100, 16)).astype(np.float32)
    _, got = index.search(q, 100)
    _, want = brute_force(q, x, 100)
    recall = np.mean([len(set(g) & set(w)) / 100 for g, w in zip(got.tolist(), want.tolist())])
    assert recall >= 0.95, recall
    assert index.recall_at_k(q, 100) == pytest.approx(recall)
    assert index.pq_m == pq_subquantizers(16) == 4 and index.nlist == int(2 * np.sqrt(200_000))


def test_hnsw_finds_the_exact_neighbours_of_a_small_corpus(tmp_path):
    rng = np.random.default_rng(2)
    x = clustered(5000, 16, rng, centers=50)
    names = write_vectors(tmp_path, x, [2000, 3000])
    index = ShardIndex(tmp_path, names, 5000, 16, "hnsw", progress=False)
    assert index.recall_at_k(x[:50] + 0.1, 20) >= 0.95


def test_index_choice_by_size():
    assert [choose_index(n) for n in (10, 1_000_000, 1_000_001, 10_000_000, 10_000_001)] == [
        "exact", "exact", "hnsw", "hnsw", "ivfpq"]
    assert choose_index(10, "ivfpq") == "ivfpq"
    with pytest.raises(ValueError, match="--index must be one of auto, exact, hnsw, ivfpq"):
        choose_index(10, "ivf")


# ------------------------------------------------------------------ mining with the tiny model
@pytest.fixture(scope="module")
def mining_data(base_dirs, tmp_path_factory):
    """120 distinct documents of vocabulary words, 12 queries whose positive is one of them, and the folder."""
    root = tmp_path_factory.mktemp("mine")
    rng = np.random.default_rng(3)
    docs = sorted({" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(130)})[:120]
    write_jsonl(root / "corpus.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(docs)])
    queries = [{"query": " ".join(docs[i * 9].split()[:3]), "pos": [docs[i * 9]]} for i in range(12)]
    queries[3]["neg"] = [docs[50]]
    write_jsonl(root / "queries.jsonl", queries)
    model = base_dirs["qwen2"]
    encode_corpus(CorpusJob(model=model, input=root / "corpus.jsonl", output=root / "emb", shard_rows=25,
                            settings=EncodeSettings(id_field="id"), dtype="float32", progress=False))
    return root, model


def test_mining_over_shards_equals_in_memory_mine(mining_data):
    root, model = mining_data
    e = Embedder.load(model, dtype="float32", device="cpu")
    kw = dict(ranks=(2, 12), margin=0.002, num_negatives=6, progress=False)
    want = mine(root / "queries.jsonl", root / "want.jsonl", e, corpus=root / "corpus.jsonl", **kw)
    got = mine_corpus(root / "queries.jsonl", root / "got.jsonl", e, root / "emb", index="auto", **kw)
    assert got["index"] == "exact" and got["corpus"] == 120
    assert [r["neg"] for r in read_jsonl(root / "got.jsonl")] == [r["neg"] for r in read_jsonl(root / "want.jsonl")]
    assert got["negatives_added"] == want["negatives_added"] > 0 and got["dropped"] == want["dropped"]
    want_rep = read_jsonl(root / "want.jsonl.report.jsonl")
    got_rep = read_jsonl(root / "got.jsonl.report.jsonl")
    assert [[k["rank"] for k in r["kept"]] for r in got_rep] == [[k["rank"] for k in r["kept"]] for r in want_rep]
    docs = {r["text"]: r["id"] for r in read_jsonl(root / "corpus.jsonl")}
    assert all(docs[k["text"]] == k["id"] for r in got_rep for k in r["kept"])


def test_mine_cli_with_forced_index_and_refusals(mining_data, base_dirs, tmp_path, capsys):
    root, model = mining_data
    args = ["mine", "--model", str(model), "--queries", str(root / "queries.jsonl"), "--corpus-embeddings",
            f"{root / 'emb'}/", "--output", str(tmp_path / "m.jsonl"), "--index", "hnsw", "--ranks", "2-12",
            "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["index"] == "hnsw" and 0 <= summary["recall@100_vs_exact_on_12_queries"] <= 1
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 12
    assert main(args + ["--corpus", str(root / "corpus.jsonl")]) == 2
    assert "not both" in capsys.readouterr().err
    other = [a if a != str(model) else str(base_dirs["llama"]) for a in args]
    assert main(other) == 2
    assert "embedded by another model" in capsys.readouterr().err


def test_mine_refuses_an_unfinished_folder(mining_data, tmp_path):
    root, model = mining_data
    encode_corpus(CorpusJob(model=model, input=root / "corpus.jsonl", output=tmp_path / "half", shard_rows=25,
                            shard="0/2", settings=EncodeSettings(id_field="id"), dtype="float32", progress=False))
    with pytest.raises(ValueError, match=r"3 of 5 shards are encoded; rerun the same `qzhou encode`"):
        mine_corpus(root / "queries.jsonl", tmp_path / "o.jsonl", model, tmp_path / "half", progress=False)
    with pytest.raises(FileNotFoundError, match="manifest.json: no such file"):
        mine_corpus(root / "queries.jsonl", tmp_path / "o.jsonl", model, tmp_path, progress=False)
