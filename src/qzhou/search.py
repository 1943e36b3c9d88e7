"""The package's one exact top-k search (evaluation, mining and the quickstart all call `top_k`).

Scores are cosine by default: rows are L2-normalised here, because a loaded model need not normalise (a
sentence-transformers folder without a Normalize module gives raw pooled vectors, whose dot products rank long
vectors first). The corpus is scored block by block and the best k so far are carried from block to block, so
memory stays a few times `block_bytes` (a score matrix and its working copies) whatever the corpus size. Ties are broken by corpus index, lowest first, so the
result is the same for any block size and equals a stable sort of the full score matrix.

Large corpora (`faiss_min_docs` rows or more) go through faiss's IndexFlatIP when faiss is installed: also exact
(multi-threaded BLAS and a heap), the same hits up to float rounding, ties re-sorted by index within the k
returned (which of several documents tied at the k-th place comes back is faiss's choice). Without faiss the
numpy path serves every size.
"""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "dot")
FAISS_MIN_DOCS = 50_000
BLOCK_BYTES = 64 << 20  # the (queries, corpus block) score matrix is kept under this


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length, as float32 (a zero row stays zero): inner products become cosines."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, *, metric: str = "cosine", block_size: int | None = None,
          block_bytes: int = BLOCK_BYTES, faiss_min_docs: int = FAISS_MIN_DOCS) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D) queries and (N, D) corpus -> (Q, min(k, N)) scores (float32) and corpus indices (int64), best
    first, ties by index. `metric`: "cosine" (rows normalised here) or "dot" (the raw inner product, for vectors
    known to be unit length or for models trained on dot products). `block_size`: corpus rows scored at once
    (default: as many as fit `block_bytes` for a 64-query chunk)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)} (got {metric!r})")
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    queries, corpus = np.atleast_2d(np.asarray(queries, np.float32)), np.atleast_2d(np.asarray(corpus, np.float32))
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions but the corpus has {corpus.shape[1]}; "
                         "embed both with the same model (and the same Matryoshka dim)")
    k = min(k, corpus.shape[0])
    if k == 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], k), np.float32), np.zeros((queries.shape[0], k), np.int64)
    if metric == "cosine":
        queries = normalize(queries)
    if corpus.shape[0] >= faiss_min_docs:
        found = _faiss_top_k(queries, corpus, k, metric)
        if found is not None:
            return found
    return _numpy_top_k(queries, corpus, k, metric, block_size, block_bytes)


def _numpy_top_k(queries: np.ndarray, corpus: np.ndarray, k: int, metric: str, block_size: int | None,
                 block_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise over the corpus, each block's scores merged with the best k so far (kept in index order, so
    that a tie at the cut keeps the lowest indices), then sorted by score once at the end."""
    n = corpus.shape[0]
    block = max(1, block_size or block_bytes // (4 * 64))
    chunk = max(1, block_bytes // (4 * (min(block, n) + k)))  # query rows per score matrix
    best_s = np.empty((queries.shape[0], 0), np.float32)  # (Q, <=k) best so far, in index order
    best_i = np.empty((queries.shape[0], 0), np.int64)
    for lo in range(0, n, block):
        docs = corpus[lo:lo + block]
        docs = normalize(docs) if metric == "cosine" else docs
        new_s, new_i = [], []
        for q0 in range(0, queries.shape[0], chunk):
            kept_s, kept_i = best_s[q0:q0 + chunk], best_i[q0:q0 + chunk]
            scores = np.concatenate([kept_s, queries[q0:q0 + chunk] @ docs.T], axis=1)  # (C, k' + B)
            cols = _keep_best(scores, k)
            new_s.append(np.take_along_axis(scores, cols, axis=1))
            carried = np.take_along_axis(kept_i, np.minimum(cols, kept_i.shape[1] - 1), axis=1) if kept_i.size else 0
            new_i.append(np.where(cols < kept_i.shape[1], carried, lo + cols - kept_i.shape[1]))
        best_s, best_i = np.concatenate(new_s), np.concatenate(new_i)
    order = np.lexsort((best_i, -best_s), axis=1)  # score descending, then index ascending
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def _keep_best(scores: np.ndarray, k: int) -> np.ndarray:
    """(C, M) scores whose columns are in index order -> (C, min(k, M)) columns of the k best, ascending; of the
    columns tied with the k-th best score, the leftmost (lowest index) are kept."""
    if scores.shape[1] <= k:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    m = scores.shape[1]
    kth = np.partition(scores, m - k, axis=1)[:, m - k:m - k + 1]  # (C, 1) the k-th best score of each row
    keep = scores > kth
    tied = scores == kth
    need = k - keep.sum(axis=1)  # how many of the tied columns each row takes
    crowded = np.flatnonzero(tied.sum(axis=1) > need)  # rows with more ties at the cut than places left
    if crowded.size:
        first = np.cumsum(tied[crowded], axis=1, dtype=np.int32) <= need[crowded, None]
        tied[crowded] &= first
    keep |= tied
    return np.nonzero(keep)[1].reshape(len(scores), k)  # row-major: each row's k columns, ascending


def _faiss_top_k(queries: np.ndarray, corpus: np.ndarray, k: int, metric: str):
    """faiss IndexFlatIP (exact), or None when faiss is not installed (the numpy path gives the same hits)."""
    try:
        import faiss
    except ImportError:
        return None
    vectors = normalize(corpus) if metric == "cosine" else np.ascontiguousarray(corpus)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, idx = index.search(np.ascontiguousarray(queries), k)  # (Q, k) each, best first
    order = np.lexsort((idx, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(idx, order, axis=1).astype(np.int64)
