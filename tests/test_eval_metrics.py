"""Metrics against hand computations, brute-force loops written from the published formulas, and mteb."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from qzhou.evaluation import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is in the eval extra")


# ------------------------------------------------------------------------------------------------ correlation
def test_spearman_by_hand_and_against_scipy_with_ties():
    from scipy.stats import pearsonr, spearmanr

    # ranks of x: 1, 2.5, 2.5, 4; of y: 4, 3, 2, 1 -> pearson of the ranks by hand
    x, y = np.array([1.0, 2.0, 2.0, 3.0]), np.array([4.0, 3.0, 2.0, 1.0])
    rx, ry = np.array([1, 2.5, 2.5, 4]) - 2.5, np.array([4, 3, 2, 1]) - 2.5
    assert metrics.spearman(x, y) == pytest.approx((rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry)))
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 6, 200).astype(float), rng.normal(size=200)
        assert metrics.spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
        assert metrics.pearson(a, b) == pytest.approx(pearsonr(a, b)[0], abs=1e-12)


def test_sts_scores_use_the_cosine_of_each_pair():
    e1 = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    e2 = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=np.float32)  # cosines 1, 0.707, 0
    s = metrics.sts_scores(e1, e2, np.array([5.0, 2.5, 0.0]))
    assert s["cosine_spearman"] == pytest.approx(1.0)
    assert s["cosine_pearson"] == pytest.approx(metrics.pearson([5, 2.5, 0], [1, math.sqrt(0.5), 0]))


# ------------------------------------------------------------------------------------------------ pairs
def test_average_precision_by_hand_and_against_sklearn():
    # relevant at ranks 1 and 3 of 3: (1/1 + 2/3) / 2
    assert metrics.average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])) == pytest.approx(5 / 6)
    rng = np.random.default_rng(1)
    for _ in range(30):
        y = rng.integers(0, 2, 100)
        y[0] = 1
        s = rng.integers(0, 10, 100) / 10  # many ties
        assert metrics.average_precision(y, s) == pytest.approx(sklearn_metrics.average_precision_score(y, s), abs=1e-12)


def test_pair_classification_max_ap_is_the_best_similarity():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    y = rng.integers(0, 2, 50)
    s = metrics.pair_classification_scores(a, b, y)
    assert s["max_ap"] == max(s["cosine_ap"], s["dot_ap"], s["euclidean_ap"], s["manhattan_ap"])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert s["cosine_ap"] == pytest.approx(sklearn_metrics.average_precision_score(y, cos))


# ------------------------------------------------------------------------------------------------ retrieval
def test_retrieval_scores_by_hand():
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}}
    qrels = {"q": {"a": 1, "c": 1, "z": 1}}  # z is never retrieved
    s = metrics.retrieval_scores(run, qrels, k_values=(1, 3, 10))
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert s["ndcg_at_3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg3)
    assert s["map_at_3"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert s["recall_at_1"] == pytest.approx(1 / 3) and s["recall_at_10"] == pytest.approx(2 / 3)
    assert s["precision_at_3"] == pytest.approx(2 / 3) and s["precision_at_10"] == pytest.approx(2 / 10)
    assert s["mrr_at_1"] == 1.0


def test_ties_rank_by_document_id_descending_like_trec_eval():
    run = {"q": {"d1": 0.5, "d2": 0.5, "d3": 0.5}}
    assert metrics.ranked(run["q"]) == ["d3", "d2", "d1"]
    s = metrics.retrieval_scores(run, {"q": {"d1": 1}}, k_values=(1, 3))
    assert s["mrr_at_3"] == pytest.approx(1 / 3) and s["mrr_at_1"] == 0.0


def test_queries_without_relevant_documents_are_skipped_and_all_empty_is_an_error():
    run = {"q1": {"a": 1.0}, "q2": {"a": 1.0}}
    assert metrics.retrieval_scores(run, {"q1": {"a": 1}, "q2": {"a": 0}})["ndcg_at_10"] == 1.0
    with pytest.raises(ValueError, match="no query has a relevant document"):
        metrics.retrieval_scores(run, {"q1": {"a": 0}})


def brute_force_retrieval(run, qrels, k_values):
    """trec_eval's nDCG@k, MAP@k, Recall@k, P@k and MRR@k restated as loops (the reference)."""
    totals = {f"{m}_at_{k}": 0.0 for m in ("ndcg", "map", "recall", "precision", "mrr") for k in k_values}
    judged = {q: {d: r for d, r in docs.items() if r > 0} for q, docs in qrels.items()}
    judged = {q: docs for q, docs in judged.items() if docs}
    for qid, gains in judged.items():
        hits = sorted(run.get(qid, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        rel = [gains.get(d, 0) for d, _ in hits]
        ideal = sorted(gains.values(), reverse=True)
        for k in k_values:
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(rel[:k]))
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            found = [i for i, g in enumerate(rel[:k]) if g > 0]
            totals[f"ndcg_at_{k}"] += dcg / idcg
            totals[f"map_at_{k}"] += sum((n + 1) / (i + 1) for n, i in enumerate(found)) / len(gains)
            totals[f"recall_at_{k}"] += len(found) / len(gains)
            totals[f"precision_at_{k}"] += len(found) / k
            totals[f"mrr_at_{k}"] += 1 / (found[0] + 1) if found else 0.0
    return {key: value / len(judged) for key, value in totals.items()}


def test_retrieval_scores_equal_a_brute_force_loop_pytrec_eval_and_mtebs_mrr():
    pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier is in the eval extra")
    rng = np.random.default_rng(3)
    run, qrels = {}, {}
    for q in range(40):
        docs = [f"d{i}" for i in rng.choice(300, size=150, replace=False)]
        run[f"q{q}"] = {d: float(rng.integers(0, 40)) / 40 for d in docs}  # plenty of ties
        qrels[f"q{q}"] = {f"d{i}": int(rng.integers(1, 4)) for i in rng.choice(300, size=rng.integers(1, 12))}
    run["q0"] = {}  # a judged query that retrieved nothing scores 0
    del run["q1"]  # as does one missing from the run
    qrels["q2"] = {"d1": 0}  # a query without a relevant document is skipped
    k = metrics.K_VALUES
    ours = metrics.retrieval_scores(run, qrels, k)
    reference = brute_force_retrieval(run, qrels, k)
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    qrels = {q: v for q, v in qrels.items() if q in run and q != "q2"}  # what mteb scores: queries run and judged
    run = {q: run[q] for q in qrels}
    ours = metrics.retrieval_scores(run, qrels, k)
    measures = {"ndcg_cut." + ",".join(map(str, k)), "map_cut." + ",".join(map(str, k)),
                "recall." + ",".join(map(str, k)), "P." + ",".join(map(str, k))}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for ours_name, trec_name in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("precision", "P")):
        for kk in k:
            ref = np.mean([v[f"{trec_name}_{kk}"] for v in theirs.values()])
            assert ours[f"{ours_name}_at_{kk}"] == pytest.approx(ref, abs=1e-12), (ours_name, kk)
    mteb_metrics = pytest.importorskip("mteb._evaluators.retrieval_metrics", reason="mteb is in the eval extra")
    mrr = mteb_metrics.mrr(qrels, run, list(k))
    for kk in k:
        assert ours[f"mrr_at_{kk}"] == pytest.approx(np.mean(mrr[f"MRR@{kk}"]), abs=1e-12)


# ------------------------------------------------------------------------------------------------ classification
def test_f1_scores_by_hand_and_equal_sklearn():
    # a: tp 2, fp 0, fn 1 -> 4/5; b: tp 1, fp 1, fn 0 -> 2/3; supports 3 and 1
    s = metrics.f1_scores(list("aaab"), list("aabb"))
    assert s["f1"] == pytest.approx((4 / 5 + 2 / 3) / 2) and s["f1_weighted"] == pytest.approx((3 * 4 / 5 + 2 / 3) / 4)
    assert metrics.f1_scores(["a"], ["c"]) == {"f1": 0.0, "f1_weighted": 0.0}  # a label only predicted counts too
    rng = np.random.default_rng(5)
    for _ in range(20):
        y, p = rng.integers(0, 5, 80), rng.integers(0, 6, 80)  # a predicted label absent from y_true too
        ours = metrics.f1_scores(y, p)
        assert ours["f1"] == pytest.approx(sklearn_metrics.f1_score(y, p, average="macro", zero_division=0))
        assert ours["f1_weighted"] == pytest.approx(sklearn_metrics.f1_score(y, p, average="weighted", zero_division=0))


def test_undersampling_by_hand():
    labels = ["a", "b"] * 10
    picks = metrics.mteb_undersample(labels, n_experiments=3, samples_per_label=2, seed=42)
    idxs = list(range(20))
    for pick in picks:  # the same permutation applied once more per experiment; first 2 of each label kept
        np.random.RandomState(42).shuffle(idxs)
        keep = {i for lab in "ab" for i in [j for j in idxs if labels[j] == lab][:2]}
        assert pick == [i for i in idxs if i in keep]
    assert picks[0] != picks[1]


def test_logistic_regression_separates_separable_data():
    rng = np.random.default_rng(6)
    x = np.r_[rng.normal(-3, 1, (40, 4)), rng.normal(3, 1, (40, 4))]
    y = ["neg"] * 40 + ["pos"] * 40
    s = metrics.logistic_regression_scores(x[::2], y[::2], x[1::2], y[1::2])
    assert s == {"accuracy": 1.0, "f1": 1.0, "f1_weighted": 1.0}


# ------------------------------------------------------------------------------------------------ clustering
def test_v_measure_by_hand_and_against_sklearn():
    assert metrics.v_measure([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)  # names do not matter
    assert metrics.v_measure([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    rng = np.random.default_rng(7)
    for _ in range(20):
        t, p = rng.integers(0, 4, 100), rng.integers(0, 6, 100)
        assert metrics.v_measure(t, p) == pytest.approx(sklearn_metrics.v_measure_score(t, p), abs=1e-12)


def test_bootstrap_clustering_scores_well_separated_clusters_perfectly():
    rng = np.random.default_rng(8)
    emb = np.r_[rng.normal(-5, 0.1, (30, 4)), rng.normal(5, 0.1, (30, 4))]
    labels = ["x"] * 30 + ["y"] * 30
    scores = metrics.bootstrap_v_measures(emb, labels, random.Random(42), n_experiments=3, cluster_size=50, batch_size=16)
    assert scores == pytest.approx([1.0, 1.0, 1.0])
    assert metrics.clustering_subset(100, 0.04, None, random.Random(42)) == random.Random(42).sample(range(100), k=4)
    assert metrics.clustering_subset(10, None, None, random.Random(0)) == list(range(10))
