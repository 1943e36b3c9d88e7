"""`evaluate(embedder, tasks, rules=...) -> Results`: embed each task's texts with the task's instruction for
that side and score them with MTEB's protocols (`metrics`).

Every distinct (instruction, text) is embedded once per run, however many pairs, experiments or tasks use it
(SICK repeats most of its sentences; classification experiments reuse training texts). Retrieval scores by cosine
and searches with `qzhou.search.top_k` (exact: numpy blockwise, faiss IndexFlatIP for large corpora).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qzhou.evaluation import metrics
from qzhou.evaluation.report import Results, TaskResult, describe_model, library_versions
from qzhou.evaluation.tasks import Corpus, Labeled, LoadedTask, Pairs, TaskSpec, load_task, resolve_tasks
from qzhou.search import FAISS_MIN_DOCS, normalize, top_k

RULES = ("qzhou", "qwen3", "none")
MAIN_SCORE = {"STS": "cosine_spearman", "PairClassification": "max_ap", "Classification": "accuracy",
              "Clustering": "v_measure", "Retrieval": "ndcg_at_10", "Reranking": "map_at_1000"}


class EmbeddingCache:
    """Embeds each distinct (instruction, text) once; later requests reuse the vector."""

    def __init__(self, embedder: Any):
        self.embedder = embedder
        self.vectors: dict[tuple[str | None, str], np.ndarray] = {}
        self.encoded = 0

    def __call__(self, texts: Sequence[str], instruction: str | None) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if (instruction, t) not in self.vectors]
        if missing:
            emb = np.asarray(self.embedder.encode(missing, instruction=instruction), dtype=np.float32)
            if emb.shape[0] != len(missing):
                raise ValueError(f"the embedder returned {emb.shape[0]} rows for {len(missing)} texts")
            self.vectors.update(((instruction, t), v) for t, v in zip(missing, emb, strict=True))
            self.encoded += len(missing)
        return np.stack([self.vectors[(instruction, t)] for t in texts])


def evaluate(embedder: Any, tasks: Sequence[str | Path | TaskSpec | LoadedTask], rules: str = "qzhou", *,
             data_root: str | Path | None = None, model_source: str | Path | None = None,
             faiss_min_docs: int = FAISS_MIN_DOCS, log: Callable[[str], None] | None = None) -> Results:
    """Score `embedder` (anything with `encode(texts, instruction=...)`, rows L2-normalised or not: scores use
    the cosine) on `tasks`: built-in names, `suite`, YAML files or folders, specs, or loaded tasks.

    `rules`: "qzhou" or "qwen3" (which texts get the task instruction; see `qzhou.instructions`), or "none" for
    models trained without instructions (all-MiniLM-L6-v2, most BERT-style embedders).
    """
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(RULES)} (got {rules!r})")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    items: list[TaskSpec | LoadedTask] = []
    for t in tasks:
        items += resolve_tasks([str(t)], data_root) if isinstance(t, (str, Path)) else [t]
    names = [(t.spec if isinstance(t, LoadedTask) else t).name for t in items]
    if len(set(names)) != len(names):
        raise ValueError(f"a task is given twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                         "task names must be unique in a run")
    # read every file first: a bad row in the last task fails before an hour of embedding, not after
    loaded = [item if isinstance(item, LoadedTask) else load_task(item) for item in items]
    cache = EmbeddingCache(embedder)
    out: list[TaskResult] = []
    for task in loaded:
        spec = task.spec
        start, before = time.perf_counter(), cache.encoded
        scores = SCORERS[spec.type](task, cache, rules, faiss_min_docs)
        result = TaskResult(
            name=spec.name, type=spec.type, main_score=MAIN_SCORE[spec.type], scores=scores, size=task.size,
            split=spec.split, language=spec.language, seconds=round(time.perf_counter() - start, 2),
            texts_embedded=cache.encoded - before, origin=spec.origin, files=task.files,
            instructions={side: spec.instruction_for(side, rules) for side in ("query", "document")},
            protocol=(opts.model_dump() if (opts := spec.protocol_options()) else {}))
        out.append(result)
        log(f"{spec.name:<28} {spec.type:<18} {result.main_score} = {100 * result.main:.2f} "
            f"({result.texts_embedded} texts embedded, {result.seconds:.1f}s)")
    return Results(model=describe_model(embedder, model_source), rules=rules, versions=library_versions(), tasks=out)


# ------------------------------------------------------------------------------------------------ per type
def _pairs(task: LoadedTask, cache: EmbeddingCache, rules: str, _: int) -> dict[str, float]:
    """STS and pair classification: both texts of a pair are embedded alike (mteb passes no prompt type)."""
    data: Pairs = task.data  # type: ignore[assignment]
    instruction = task.spec.instruction_for("query", rules)
    a, b = cache(data.text1, instruction), cache(data.text2, instruction)
    if task.spec.type == "STS":
        return metrics.sts_scores(a, b, data.values)
    return metrics.pair_classification_scores(a, b, data.values)


def _classification(task: LoadedTask, cache: EmbeddingCache, rules: str, _: int) -> dict[str, float]:
    data: Labeled = task.data  # type: ignore[assignment]
    train: Labeled = task.train  # type: ignore[assignment]
    opts = task.spec.protocol_options()
    picks = metrics.mteb_undersample(train.labels, opts.n_experiments, opts.samples_per_label, opts.seed)
    union = sorted(set().union(*picks))  # only the training texts some experiment uses are embedded
    row = {j: p for p, j in enumerate(union)}
    instruction = task.spec.instruction_for("query", rules)
    x_train = cache([train.texts[j] for j in union], instruction)
    x_test = cache(data.texts, instruction)
    runs = [metrics.logistic_regression_scores(x_train[[row[j] for j in pick]], [train.labels[j] for j in pick],
                                               x_test, data.labels, max_iter=opts.max_iter, seed=opts.seed)
            for pick in picks]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def _clustering(task: LoadedTask, cache: EmbeddingCache, rules: str, _: int) -> dict[str, float]:
    data: Labeled = task.data  # type: ignore[assignment]
    opts = task.spec.protocol_options()
    rng = random.Random(opts.seed)  # one stream for the subset and the bootstrap draws, as mteb's task has
    subset = metrics.clustering_subset(len(data.texts), opts.max_fraction, opts.max_documents, rng)
    emb = cache([data.texts[i] for i in subset], task.spec.instruction_for("query", rules))
    scores = metrics.bootstrap_v_measures(emb, [data.labels[i] for i in subset], rng, n_experiments=opts.n_experiments,
                                          cluster_size=opts.cluster_size, batch_size=opts.batch_size, seed=opts.seed)
    return {"v_measure": float(np.mean(scores)), "v_measure_std": float(np.std(scores))}


def retrieval_run(task: LoadedTask, cache: EmbeddingCache, rules: str,
                  faiss_min_docs: int = FAISS_MIN_DOCS) -> dict[str, dict[str, float]]:
    """query -> {doc: cosine}: each judged query against the corpus (its top max(K_VALUES), as mteb keeps) or
    against its own candidates (reranking tasks). The first stage of two-stage evaluation uses it too."""
    data: Corpus = task.data  # type: ignore[assignment]
    qids = list(data.qrels)
    q = normalize(cache([data.queries[x] for x in qids], task.spec.instruction_for("query", rules)))
    doc_instruction = task.spec.instruction_for("document", rules)
    if data.candidates is None:
        doc_ids = list(data.docs)
        d = normalize(cache([data.docs[x] for x in doc_ids], doc_instruction))
        scores, idx = top_k(q, d, max(metrics.K_VALUES), metric="dot", faiss_min_docs=faiss_min_docs)
        return {qid: dict(zip([doc_ids[j] for j in row_idx.tolist()], row_scores.tolist(), strict=True))
                for qid, row_scores, row_idx in zip(qids, scores, idx, strict=True)}
    wanted = list(dict.fromkeys(x for qid in qids for x in data.candidates[qid]))  # candidates shared by queries
    d = normalize(cache([data.docs[x] for x in wanted], doc_instruction))
    row = {x: i for i, x in enumerate(wanted)}
    return {qid: dict(zip(data.candidates[qid], (d[[row[x] for x in data.candidates[qid]]] @ q[i]).tolist(),
                          strict=True))
            for i, qid in enumerate(qids)}


def _retrieval(task: LoadedTask, cache: EmbeddingCache, rules: str, faiss_min_docs: int) -> dict[str, float]:
    """Queries with a relevant document against the corpus (retrieval) or against their candidates (reranking)."""
    return metrics.retrieval_scores(retrieval_run(task, cache, rules, faiss_min_docs), task.data.qrels)


SCORERS = {"STS": _pairs, "PairClassification": _pairs, "Classification": _classification,
           "Clustering": _clustering, "Retrieval": _retrieval, "Reranking": _retrieval}
