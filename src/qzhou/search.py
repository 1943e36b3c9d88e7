"""Exact cosine search over a small corpus (brute force); large corpora go through faiss in `mining`."""

from __future__ import annotations

import numpy as np


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, D) and (N, D) L2-normalised vectors -> (Q, k) scores and indices, best first."""
    scores = queries @ corpus.T  # (Q, N)
    k = min(k, corpus.shape[0])
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    return np.take_along_axis(scores, idx, axis=1), idx
