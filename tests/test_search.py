"""`qzhou.search.top_k` against a brute-force numpy argsort: ties, k > n, blocks smaller than the corpus, cosine
on vectors that are not unit length, and the faiss path."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qzhou.search import normalize, top_k


def brute_force(queries, corpus, k):
    """Every score, then a stable sort: best first, ties by the lower corpus index."""
    scores = queries @ corpus.T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, idx, axis=1), idx


def unit_rows_by_loop(x):
    return np.array([row / np.sqrt(sum(float(v) * float(v) for v in row)) for row in x], dtype=np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_top_k_equals_brute_force_with_ties_small_blocks_and_k_above_n(seed):
    rng = np.random.default_rng(seed)
    n, q, d = int(rng.integers(1, 80)), int(rng.integers(1, 12)), 3
    corpus = rng.integers(-2, 3, (n, d)).astype(np.float32)  # small integers: exact sums, many tied scores
    queries = rng.integers(-2, 3, (q, d)).astype(np.float32)
    for k in (1, 5, n, n + 7):
        ref_s, ref_i = brute_force(queries, corpus, k)
        for block_size, block_bytes in ((None, 64 << 20), (1, 64 << 20), (7, 64 << 20), (5, 40), (n + 3, 8)):
            s, i = top_k(queries, corpus, k, metric="dot", block_size=block_size, block_bytes=block_bytes)
            assert i.shape == (q, min(k, n)) and i.dtype == np.int64 and s.dtype == np.float32
            assert (i == ref_i).all(), (k, block_size, block_bytes)
            assert (s == ref_s).all()


def test_cosine_normalises_rows_that_are_not_unit_length():
    rng = np.random.default_rng(10)
    corpus = rng.standard_normal((500, 16)) * rng.uniform(0.01, 100, (500, 1))  # norms over four decades
    queries = rng.standard_normal((20, 16)) * rng.uniform(0.01, 100, (20, 1))
    cos = unit_rows_by_loop(queries) @ unit_rows_by_loop(corpus).T  # float64 reference
    ref_i = np.argsort(-cos, axis=1, kind="stable")[:, :10]
    s, i = top_k(queries.astype(np.float32), corpus.astype(np.float32), 10, block_size=64)
    assert (i == ref_i).all()
    assert np.allclose(s, np.take_along_axis(cos, ref_i, axis=1), atol=1e-5)
    _, by_dot = top_k(queries, corpus, 10, metric="dot")
    assert (by_dot != ref_i).any()  # the raw inner product would rank long vectors first: this test can fail
    unit_s, unit_i = top_k(normalize(queries), normalize(corpus), 10, metric="dot")
    assert (unit_i == i).all() and np.allclose(unit_s, s, atol=1e-6)


def test_faiss_path_equals_the_numpy_path():
    pytest.importorskip("faiss", reason="faiss-cpu is in the eval and mine extras")
    rng = np.random.default_rng(4)
    docs = rng.normal(size=(3000, 16)).astype(np.float32) * 3
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    exact_s, exact_i = top_k(queries, docs, 100, faiss_min_docs=10**9, block_size=500)
    fast_s, fast_i = top_k(queries, docs, 100, faiss_min_docs=0)
    _, brute = brute_force(normalize(queries), normalize(docs), 100)
    assert (exact_i == fast_i).all() and (exact_i == brute).all()
    assert np.allclose(exact_s, fast_s, atol=1e-5)


def test_without_faiss_large_corpora_use_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
    rng = np.random.default_rng(5)
    docs, queries = rng.normal(size=(300, 8)), rng.normal(size=(4, 8))
    s, i = top_k(queries, docs, 3, faiss_min_docs=0)
    ref_s, ref_i = brute_force(normalize(queries), normalize(docs), 3)
    assert (i == ref_i).all() and np.allclose(s, ref_s, atol=1e-6)


def test_edge_cases_and_errors():
    corpus = np.eye(3, dtype=np.float32)
    s, i = top_k(np.zeros((0, 3)), corpus, 2)
    assert s.shape == i.shape == (0, 2)
    s, i = top_k(np.array([0.0, 0.0, 0.0]), corpus, 2)  # a zero query scores 0 everywhere: ties by index
    assert i.tolist() == [[0, 1]] and s.tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="metric must be one of cosine, dot"):
        top_k(corpus, corpus, 1, metric="l2")
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k(corpus, corpus, 0)
    with pytest.raises(ValueError, match="queries have 2 dimensions but the corpus has 3"):
        top_k(np.ones((1, 2)), corpus, 1)
