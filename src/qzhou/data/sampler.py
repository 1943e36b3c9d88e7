"""The multi-task batch sampler of QZhou / gte: every batch comes from one dataset (so in-batch negatives are
in-domain and each batch has one loss), dataset i is drawn with probability

    p_i = n_i^α / Σ_j n_j^α                                          (α = 0.5 by default, gte / mGTE)

or, with a retrieval share η (QZhou stage 2: 0.72),

    p_i = η · n_i^α / S_ret  (retrieval)      p_i = (1 − η) · n_i^α / S_non  (others).

Inside a batch no text appears twice (a repeated text would be an in-batch false negative): a row that would
repeat one is deferred to a later batch of its dataset, never dropped. Rows of a dataset are visited in a
fresh permutation per epoch. The sequence is a pure function of the seed, and `state_dict()` /
`load_state_dict()` resume it exactly (sentence-transformers' multi-dataset samplers keep one dataset per
batch too, but have no α / η weighting, no in-batch text de-duplication and no exact resume).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

KeyFn = Callable[[int, int], Sequence[Any]]  # (dataset, row) -> hashable keys of the row's texts


def dedup_keys(record: dict[str, Any]) -> list[str]:
    """The texts that may not repeat inside one batch: the query (or first text) and the first positive (or second
    text). Training and `qzhou data sample` both use these."""
    from qzhou.data.records import texts_of

    return texts_of(record)[:2]


def dataset_probabilities(sizes: Sequence[int], retrieval: Sequence[bool], alpha: float = 0.5,
                          retrieval_share: float | None = None) -> np.ndarray:
    """`retrieval[i]`: dataset i counts towards the retrieval share (its objective's `retrieval` flag)."""
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"every dataset needs at least one row (sizes {list(sizes)})")
    if not all(isinstance(r, (bool, np.bool_)) for r in retrieval):
        raise TypeError(f"retrieval takes one bool per dataset (got {list(retrieval)})")
    w = np.asarray(sizes, dtype=np.float64) ** alpha
    if retrieval_share is None:
        return w / w.sum()
    if not 0.0 <= retrieval_share <= 1.0:
        raise ValueError(f"retrieval_share must be in [0, 1] (got {retrieval_share})")
    is_ret = np.array(retrieval, dtype=bool)
    if retrieval_share > 0 and not is_ret.any():
        raise ValueError(f"retrieval_share {retrieval_share} needs at least one retrieval dataset")
    if retrieval_share < 1 and is_ret.all():
        raise ValueError(f"retrieval_share {retrieval_share} needs at least one non-retrieval dataset")
    p = np.zeros_like(w)
    if is_ret.any():
        p[is_ret] = retrieval_share * w[is_ret] / w[is_ret].sum()
    if (~is_ret).any():
        p[~is_ret] = (1 - retrieval_share) * w[~is_ret] / w[~is_ret].sum()
    return p


class MultiTaskBatchSampler:
    """Yields (dataset index, [row indices]) batches forever; see the module docstring."""

    def __init__(self, sizes: Sequence[int], retrieval: Sequence[bool], batch_sizes: Sequence[int], *,
                 alpha: float = 0.5, retrieval_share: float | None = None, seed: int = 0,
                 keys: KeyFn | None = None):
        if not (len(sizes) == len(retrieval) == len(batch_sizes)):
            raise ValueError("sizes, retrieval and batch_sizes need one entry per dataset")
        self.sizes, self.batch_sizes = list(sizes), list(batch_sizes)
        self.probabilities = dataset_probabilities(sizes, retrieval, alpha, retrieval_share)
        self.seed, self.keys = seed, keys
        self._rng = np.random.default_rng(seed)
        self.step = 0
        self._epoch = [0] * len(sizes)
        self._cursor = [0] * len(sizes)
        self._deferred: list[list[int]] = [[] for _ in sizes]
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    def _perm(self, d: int) -> np.ndarray:
        epoch = self._epoch[d]
        cached = self._perm_cache.get(d)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, d, epoch]).permutation(self.sizes[d]))
            self._perm_cache[d] = cached
        return cached[1]

    def _next_row(self, d: int) -> int:
        if self._cursor[d] >= self.sizes[d]:
            self._epoch[d] += 1
            self._cursor[d] = 0
        row = int(self._perm(d)[self._cursor[d]])
        self._cursor[d] += 1
        return row

    def next_batch(self) -> tuple[int, list[int]]:
        d = int(self._rng.choice(len(self.sizes), p=self.probabilities))
        size = min(self.batch_sizes[d], self.sizes[d])
        batch: list[int] = []
        seen: set[Any] = set()
        pending, self._deferred[d] = self._deferred[d], []
        tried = 0
        while len(batch) < size and tried < self.sizes[d] + len(pending):
            row = pending.pop(0) if pending else self._next_row(d)
            tried += 1
            ks = list(self.keys(d, row)) if self.keys else [row]
            if row in batch or any(k in seen for k in ks):
                self._deferred[d].append(row)
                continue
            batch.append(row)
            seen.update(ks)
        self._deferred[d].extend(pending)
        self.step += 1
        return d, batch

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rng": self._rng.bit_generator.state, "epoch": list(self._epoch),
                "cursor": list(self._cursor), "deferred": [list(x) for x in self._deferred], "seed": self.seed,
                "sizes": list(self.sizes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sizes"] != self.sizes or state["seed"] != self.seed:
            raise ValueError(f"sampler state is for sizes {state['sizes']} / seed {state['seed']}, "
                             f"not {self.sizes} / {self.seed}")
        self.step = state["step"]
        self._rng.bit_generator.state = state["rng"]
        self._epoch, self._cursor = list(state["epoch"]), list(state["cursor"])
        self._deferred = [list(x) for x in state["deferred"]]


def sampler_for(records: Sequence[Sequence[dict[str, Any]]], retrieval: Sequence[bool],
                batch_sizes: Sequence[int], *, alpha: float, retrieval_share: float | None,
                seed: int) -> MultiTaskBatchSampler:
    """The sampler a training stage draws from (global batch sizes), with its in-batch de-duplication keys: the
    trainer and `qzhou data sample` build it here, so the preview is exactly what training draws."""
    keys = [[dedup_keys(r) for r in recs] for recs in records]
    return MultiTaskBatchSampler([len(r) for r in records], retrieval, batch_sizes, alpha=alpha,
                                 retrieval_share=retrieval_share, seed=seed, keys=lambda d, i: keys[d][i])
