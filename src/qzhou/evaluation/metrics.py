"""MTEB's metrics as pure functions: arrays (or run/qrels dicts) in, numbers out, 0-1 like mteb stores them
(reports multiply by 100, as the leaderboard shows them).

Each one reproduces what the installed mteb computes, down to tie-breaking and random draws, so that a local task
scores what mteb would on the same data (tests/test_eval_mteb.py checks this against mteb itself):

- STS: Spearman of the cosine against the gold scores (`AbsTaskSTS`, scipy `spearmanr`).
- Pair classification: average precision of the cosine; `max_ap` over cosine, dot, -euclidean, -manhattan is
  mteb's main score (`AbsTaskPairClassification`, sklearn `average_precision_score`).
- Retrieval / reranking: trec_eval's nDCG@k, MAP@k, Recall@k, P@k (what mteb gets from pytrec_eval) and mteb's
  MRR@k; documents rank by score, ties by document id, both descending, as trec_eval does.
- Classification: mteb's undersampling (numpy RandomState, the same permutation applied once per experiment) and
  logistic regression (lbfgs, max_iter 100) on the embeddings; accuracy and macro F1.
- Clustering: mteb v2 (`AbsTaskClustering`): bootstrap samples drawn with `random.Random(seed)`, MiniBatchKMeans,
  V-measure.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

K_VALUES = (1, 3, 5, 10, 20, 100, 1000)  # mteb AbsTaskRetrieval.k_values; the run keeps the top max(K_VALUES)


# ------------------------------------------------------------------------------------------------ correlation
def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the mean of the ranks they span (scipy's 'average' method)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each run of equal values
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64) - np.mean(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64) - np.mean(y, dtype=np.float64)
    return float((x @ y) / np.sqrt((x @ x) * (y @ y)))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


def _row_norms(x: np.ndarray, squared: bool = False) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)  # the summation sklearn's row_norms uses, so results match it to the bit
    return sq if squared else np.sqrt(sq)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D), (N, D) -> (N,) cosine of each pair as mteb computes it, 1 - |a/|a| - b/|b||^2 / 2: a pair of
    identical vectors scores exactly 1, so such pairs tie as they do in mteb (Spearman is sensitive to ties)."""
    a = a / np.maximum(_row_norms(a), 1e-12)[:, None]
    b = b / np.maximum(_row_norms(b), 1e-12)[:, None]
    return 1 - 0.5 * _row_norms(a - b, squared=True)


def _pair_similarities(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Higher = more similar for every entry (distances are negated); each computed as mteb does."""
    return {"cosine": paired_cosine(a, b), "dot": np.array([np.dot(x, y) for x, y in zip(a, b, strict=True)]),
            "euclidean": -_row_norms(a - b), "manhattan": -np.abs(a - b).sum(axis=1)}


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Main score: cosine_spearman."""
    out = {}
    for name, sim in _pair_similarities(emb1, emb2).items():
        if name != "dot":
            out[f"{name}_spearman"] = spearman(gold, sim)
            out[f"{name}_pearson"] = pearson(gold, sim)
    return out


# ------------------------------------------------------------------------------------------------ pairs
def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall steps, one step per distinct score (sklearn's definition)."""
    labels = np.asarray(labels) > 0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(scores, dtype=np.float64)[order], labels[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last index of each group of tied scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    if tp[-1] == 0:
        return 0.0
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Main score: max_ap (mteb); cosine_ap is the average precision of the cosine alone."""
    out = {f"{name}_ap": average_precision(labels, sim) for name, sim in _pair_similarities(emb1, emb2).items()}
    out["max_ap"] = max(out.values())
    return out


# ------------------------------------------------------------------------------------------------ retrieval
def ranked(doc_scores: Mapping[str, float]) -> list[str]:
    """Document ids best first: score descending, ties by id descending (trec_eval and mteb's MRR)."""
    return [d for d, _ in sorted(doc_scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def retrieval_scores(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                     k_values: Sequence[int] = K_VALUES) -> dict[str, float]:
    """Mean over the judged queries of nDCG@k, MAP@k, Recall@k, P@k (trec_eval) and MRR@k (mteb).

    `run`: query -> {doc: score}; `qrels`: query -> {doc: relevance}; relevance > 0 is relevant and is the gain of
    nDCG. Queries without a relevant document are skipped (mteb filters them out before scoring).
    """
    totals = {f"{m}_at_{k}": 0.0 for m in ("ndcg", "map", "recall", "precision", "mrr") for k in k_values}
    n = 0
    for qid, judged in qrels.items():
        gains = {d: r for d, r in judged.items() if r > 0}
        if not gains:
            continue
        n += 1
        hits = ranked(run.get(qid, {}))
        rel = np.array([gains.get(d, 0) for d in hits[: max(k_values)]], dtype=np.float64)
        is_rel = rel > 0
        discounts = 1.0 / np.log2(np.arange(2, len(rel) + 2))
        ideal = np.sort(np.fromiter(gains.values(), dtype=np.float64))[::-1]
        ideal_discounts = 1.0 / np.log2(np.arange(2, len(ideal) + 2))
        found = np.cumsum(is_rel)
        precision_at_hits = np.where(is_rel, found / np.arange(1, len(rel) + 1), 0.0)
        first = int(np.argmax(is_rel)) if is_rel.any() else None
        for k in k_values:
            idcg = float(ideal[:k] @ ideal_discounts[:k])
            totals[f"ndcg_at_{k}"] += float(rel[:k] @ discounts[:k]) / idcg
            totals[f"map_at_{k}"] += float(precision_at_hits[:k].sum()) / len(gains)
            got = int(found[min(k, len(found)) - 1]) if len(found) else 0
            totals[f"recall_at_{k}"] += got / len(gains)
            totals[f"precision_at_{k}"] += got / k
            totals[f"mrr_at_{k}"] += 1.0 / (first + 1) if first is not None and first < k else 0.0
    if n == 0:
        raise ValueError("no query has a relevant document; nothing to score")
    return {key: value / n for key, value in totals.items()}


# ------------------------------------------------------------------------------------------------ classification
def mteb_undersample(labels: Sequence, n_experiments: int, samples_per_label: int, seed: int) -> list[list[int]]:
    """The training rows of each experiment, exactly as mteb's `_undersample_data` picks them: a fresh
    RandomState(seed) shuffles the (already shuffled) index list before every experiment, and the first
    `samples_per_label` rows of each label in that order are kept."""
    idxs = list(range(len(labels)))
    picked = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        counts: dict = {}
        chosen = []
        for i in idxs:
            if counts.get(labels[i], 0) < samples_per_label:
                chosen.append(i)
                counts[labels[i]] = counts.get(labels[i], 0) + 1
        picked.append(chosen)
    return picked


def f1_scores(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """Macro and support-weighted F1 over the labels seen in either list (sklearn's, zero_division=0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    f1 = np.empty(len(labels))
    support = np.empty(len(labels))
    for j, c in enumerate(labels):
        tp = np.sum((y_true == c) & (y_pred == c))
        denom = np.sum(y_true == c) + np.sum(y_pred == c)
        f1[j] = 2 * tp / denom if denom else 0.0
        support[j] = np.sum(y_true == c)
    return {"f1": float(f1.mean()), "f1_weighted": float((f1 * support).sum() / support.sum())}


def logistic_regression_scores(x_train: np.ndarray, y_train: Sequence, x_test: np.ndarray, y_test: Sequence,
                               *, max_iter: int = 100, seed: int = 42) -> dict[str, float]:
    """One mteb classification experiment: sklearn LogisticRegression(max_iter, random_state=seed)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    clf.fit(x_train, list(y_train))
    pred = clf.predict(x_test)
    return {"accuracy": float(np.mean(pred == np.asarray(y_test))), **f1_scores(y_test, pred)}


# ------------------------------------------------------------------------------------------------ clustering
def v_measure(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Harmonic mean of homogeneity and completeness (Rosenberg & Hirschberg 2007), as sklearn computes it."""
    _, t = np.unique(np.asarray(labels_true), return_inverse=True)
    _, p = np.unique(np.asarray(labels_pred), return_inverse=True)
    n = len(t)
    cont = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(cont, (t, p), 1)

    def entropy(counts: np.ndarray) -> float:
        q = counts[counts > 0] / n
        return float(-(q * np.log(q)).sum())

    h_t, h_p = entropy(cont.sum(1)), entropy(cont.sum(0))
    nz = cont > 0
    outer = np.outer(cont.sum(1), cont.sum(0))
    mi = float((cont[nz] / n * (np.log(cont[nz] * n) - np.log(outer[nz]))).sum())
    homogeneity = mi / h_t if h_t else 1.0
    completeness = mi / h_p if h_p else 1.0
    if homogeneity + completeness == 0:
        return 0.0
    return 2 * homogeneity * completeness / (homogeneity + completeness)


def clustering_subset(n: int, max_fraction: float | None, max_documents: int | None, rng: random.Random) -> list[int]:
    """The rows mteb embeds for clustering: all, or `rng.sample` of a fraction / a number of them."""
    if max_fraction is None and max_documents is None:
        return list(range(n))
    k = int(max_fraction * n) if max_fraction is not None else int(max_documents)
    return rng.sample(range(n), k=min(n, k))


def bootstrap_v_measures(embeddings: np.ndarray, labels: Sequence, rng: random.Random, *, n_experiments: int = 10,
                         cluster_size: int = 16384, batch_size: int = 512, seed: int = 42) -> list[float]:
    """mteb v2 clustering: `n_experiments` draws (with replacement) of `cluster_size` rows, each clustered by
    MiniBatchKMeans(k = number of distinct labels, k-means++, n_init=1, random_state=seed)."""
    from sklearn.cluster import MiniBatchKMeans

    labels = np.asarray(labels)
    model = MiniBatchKMeans(n_clusters=np.unique(labels).size, batch_size=batch_size, init="k-means++", n_init=1,
                            random_state=seed)
    scores = []
    for _ in range(n_experiments):
        idx = rng.choices(range(len(embeddings)), k=cluster_size)
        scores.append(v_measure(labels[idx], model.fit_predict(embeddings[idx])))
    return scores
