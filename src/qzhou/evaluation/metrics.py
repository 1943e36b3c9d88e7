"""MTEB's metrics as pure functions: arrays (or run/qrels dicts) in, numbers out, 0-1 like mteb stores them
(reports multiply by 100, as the leaderboard shows them).

Each one is computed by the library mteb itself calls, with mteb's arguments, so that a local task scores what
mteb would on the same data (tests/test_eval_mteb.py checks this against mteb itself); what is written here is
only what those libraries lack (mteb's sampling protocols, and MRR@k read off trec_eval's reciprocal rank):

- STS: Spearman (and Pearson) of the cosine against the gold scores (`AbsTaskSTS`; scipy `spearmanr`,
  `pearsonr`; similarities from sklearn's `paired_*_distances`, as mteb's evaluator computes them).
- Pair classification: average precision of the cosine; `max_ap` over cosine, dot, -euclidean, -manhattan is
  mteb's main score (`AbsTaskPairClassification`, sklearn `average_precision_score`).
- Retrieval / reranking: trec_eval's nDCG@k, MAP@k, Recall@k, P@k and MRR@k from pytrec_eval (what mteb gets
  from it; mteb's own MRR@k ranks the same way); documents rank by score, ties by document id, both descending.
- Classification: mteb's undersampling (numpy RandomState, the same permutation applied once per experiment) and
  logistic regression (lbfgs, max_iter 100) on the embeddings; sklearn's accuracy and macro / weighted F1.
- Clustering: mteb v2 (`AbsTaskClustering`): bootstrap samples drawn with `random.Random(seed)`, MiniBatchKMeans,
  sklearn's V-measure.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

K_VALUES = (1, 3, 5, 10, 20, 100, 1000)  # mteb AbsTaskRetrieval.k_values; the run keeps the top max(K_VALUES)
EVAL_INSTALL = "pip install 'qzhou[eval]'"


# ------------------------------------------------------------------------------------------------ correlation
def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(x, y)[0])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y)[0])


def _pair_similarities(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Higher = more similar for every entry (distances are negated); each computed as mteb's evaluators do."""
    from sklearn.metrics.pairwise import (
        paired_cosine_distances,
        paired_euclidean_distances,
        paired_manhattan_distances,
    )

    return {"cosine": 1 - paired_cosine_distances(a, b),
            "dot": np.array([np.dot(x, y) for x, y in zip(a, b, strict=True)]),
            "euclidean": -paired_euclidean_distances(a, b), "manhattan": -paired_manhattan_distances(a, b)}


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
    """Area under the precision-recall steps, one step per distinct score (sklearn's, as mteb calls it)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Main score: max_ap (mteb); cosine_ap is the average precision of the cosine alone."""
    out = {f"{name}_ap": average_precision(labels, sim) for name, sim in _pair_similarities(emb1, emb2).items()}
    out["max_ap"] = max(out.values())
    return out


# ------------------------------------------------------------------------------------------------ retrieval
def ranked(doc_scores: Mapping[str, float]) -> list[str]:
    """Document ids best first: score descending, ties by id descending (trec_eval's order, and mteb's MRR)."""
    return [d for d, _ in sorted(doc_scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def retrieval_scores(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                     k_values: Sequence[int] = K_VALUES) -> dict[str, float]:
    """Mean over the judged queries of nDCG@k, MAP@k, Recall@k, P@k and MRR@k, all from pytrec_eval.

    `run`: query -> {doc: score}; `qrels`: query -> {doc: relevance}; relevance > 0 is relevant and is the gain of
    nDCG. Queries without a relevant document are skipped (mteb filters them out before scoring); a judged query
    missing from `run` scores 0. MRR@k is trec_eval's reciprocal rank where the first relevant hit is within k.
    """
    try:
        import pytrec_eval
    except ImportError:
        raise ImportError(f"retrieval metrics come from pytrec_eval: {EVAL_INSTALL} (pytrec-eval-terrier)") from None
    judged = {q: {d: int(r) for d, r in docs.items() if r > 0} for q, docs in qrels.items()}
    judged = {q: docs for q, docs in judged.items() if docs}
    if not judged:
        raise ValueError("no query has a relevant document; nothing to score")
    cut = ",".join(str(k) for k in k_values)
    measures = {f"ndcg_cut.{cut}", f"map_cut.{cut}", f"recall.{cut}", f"P.{cut}", "recip_rank"}
    per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(
        {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged})
    totals = {f"{m}_at_{k}": 0.0 for m in ("ndcg", "map", "recall", "precision", "mrr") for k in k_values}
    for scores in per_query.values():
        rr = scores["recip_rank"]
        for k in k_values:
            for ours, theirs in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("precision", "P")):
                totals[f"{ours}_at_{k}"] += scores[f"{theirs}_{k}"]
            totals[f"mrr_at_{k}"] += rr if rr > 0 and round(1 / rr) <= k else 0.0
    return {key: value / len(judged) for key, value in totals.items()}


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
    """Macro and support-weighted F1 over the labels seen in either list (sklearn's, as mteb calls it; a label
    never predicted nor present scores 0 without a warning)."""
    from sklearn.metrics import f1_score

    return {"f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0))}


def logistic_regression_scores(x_train: np.ndarray, y_train: Sequence, x_test: np.ndarray, y_test: Sequence,
                               *, max_iter: int = 100, seed: int = 42) -> dict[str, float]:
    """One mteb classification experiment: sklearn LogisticRegression(max_iter, random_state=seed)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    clf.fit(x_train, list(y_train))
    pred = clf.predict(x_test)
    return {"accuracy": float(accuracy_score(list(y_test), pred)), **f1_scores(list(y_test), pred)}


# ------------------------------------------------------------------------------------------------ clustering
def v_measure(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Harmonic mean of homogeneity and completeness (Rosenberg & Hirschberg 2007): sklearn's, as mteb calls it."""
    from sklearn.metrics import v_measure_score

    return float(v_measure_score(labels_true, labels_pred))


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
