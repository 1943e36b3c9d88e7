"""A qzhou `Reranker` under the `mteb` package (mteb 2.x's `CrossEncoderProtocol`), for two-stage evaluation the
way Qwen3 ran it: mteb retrieves with the embedder and saves its predictions, each retrieval task is turned into a
reranking of the top-k (`AbsTaskRetrieval.convert_to_reranking`), and the reranker scores those pairs.

- The reranker gets the task's query-side instruction (QZhou's or Qwen3's tables, `qzhou.instructions`) in the
  prompt's `<Instruct>`; its own default instruction under rules "none".
- `predict` returns the log-odds (the order of p(yes), and still distinct where p rounds to 1.0).
- `mteb_rerank_scores` runs mteb's own retrieval protocol on a local task with a given first-stage run (nothing is
  downloaded), which is how `evaluation.rerank` is checked against mteb.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qzhou.evaluation import metrics
from qzhou.evaluation.mteb_adapter import TEMPLATES, QzhouMtebModel, get_mteb_tasks, inject, mteb
from qzhou.evaluation.report import Results, TaskResult, describe_model, library_versions
from qzhou.evaluation.tasks import LoadedTask, TaskSpec

try:
    from mteb.types import PromptType
except ImportError:  # pragma: no cover - mteb_adapter raised already
    raise


class QzhouMtebReranker:
    """An mteb cross-encoder around a qzhou `Reranker` (anything with `score(pairs, instruction=...,
    return_logits=True)`)."""

    def __init__(self, reranker: Any, rules: str = "qzhou", *, name: str | None = None, revision: str | None = None,
                 local_tasks: dict[str, TaskSpec] | None = None, extra: dict[str, dict[str, Any]] | None = None):
        self.reranker = reranker
        self._instructions = QzhouMtebModel(reranker, rules, name=name, revision=revision, local_tasks=local_tasks,
                                            extra=extra)
        self.mteb_model_meta = self._instructions.mteb_model_meta
        self.calls: list[tuple[str, str | None, int]] = []  # (task, instruction, pairs): a log

    def instruction(self, task_metadata: Any) -> str | None:
        return self._instructions.instruction(task_metadata, PromptType.query)

    def predict(self, inputs1: Any, inputs2: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
                prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        queries = [t for batch in inputs1 for t in batch["text"]]
        docs = [t if t.strip() else "Null" for batch in inputs2 for t in batch["text"]]
        if len(queries) != len(docs):
            raise ValueError(f"mteb passed {len(queries)} queries for {len(docs)} documents")
        instruction = self.instruction(task_metadata)
        self.calls.append((task_metadata.name, instruction, len(queries)))
        _, log_odds = self.reranker.score(list(zip(queries, docs, strict=True)), instruction=instruction,
                                          return_logits=True, show_progress=bool(kwargs.get("show_progress_bar")))
        return np.asarray(log_odds, dtype=np.float32)


def mteb_rerank_scores(reranker: Any, loaded: LoadedTask, first: dict[str, dict[str, float]], top_k: int,
                       rules: str = "qzhou") -> dict[str, float]:
    """mteb's scores for reranking a local retrieval task's first-stage `first` run (its top `top_k` per query)."""
    template = TEMPLATES[loaded.spec.type]
    task = inject(mteb.get_task(template), loaded)
    task.dataset["default"]["test"]["top_ranked"] = {q: metrics.ranked(docs)[:top_k] for q, docs in first.items()}
    task._top_k = top_k
    model = QzhouMtebReranker(reranker, rules, local_tasks={template: loaded.spec})
    scores = task.evaluate(model, "test", encode_kwargs={"batch_size": 32, "show_progress_bar": False})
    return dict(scores["default"])


def run_mteb_rerank(embedder: Any, reranker: Any, names: Sequence[str], rules: str = "qzhou", *, top_k: int = 100,
                    out: str | Path = "out/eval/mteb-rerank", embedder_source: str | Path | None = None,
                    reranker_source: str | Path | None = None,
                    extra: dict[str, dict[str, Any]] | None = None) -> tuple[Results, Results]:
    """mteb benchmarks or tasks (data from the Hugging Face hub): the embedder on every task with its predictions
    saved in `out/predictions` (reused by later runs), then each retrieval task reranked at `top_k`."""
    out = Path(out)
    first_info, second_info = describe_model(embedder, embedder_source), describe_model(reranker, reranker_source)
    encoder = QzhouMtebModel(embedder, rules, name=str(embedder_source) if embedder_source else None,
                             revision=first_info.get("revision") or first_info.get("fingerprint"), extra=extra)
    tasks = [t for t in get_mteb_tasks(names) if t.metadata.type == "Retrieval"]
    if not tasks:
        raise ValueError(f"none of {list(names)} is (or holds) an mteb Retrieval task; nothing to rerank")
    predictions = out / "predictions"
    first = mteb.evaluate(encoder, tasks, cache=mteb.ResultCache(out / "mteb-first"), overwrite_strategy="only-missing",
                          prediction_folder=predictions)
    model = QzhouMtebReranker(reranker, rules, name=str(reranker_source) if reranker_source else None,
                              revision=second_info.get("revision") or second_info.get("fingerprint"), extra=extra)
    second = mteb.evaluate(model, [t.convert_to_reranking(predictions, top_k=top_k) for t in tasks],
                           cache=mteb.ResultCache(out / "mteb-reranked"), overwrite_strategy="always")

    def results(run: Any, info: dict[str, Any]) -> Results:
        rows = [TaskResult(name=tr.task_name, type=tr.task_type, main_score=tr.task.metadata.main_score,
                           scores={tr.task.metadata.main_score: tr.get_score()}, size=0,
                           seconds=round(tr.evaluation_time or 0.0, 2), origin=f"mteb {tr.mteb_version}")
                for tr in run.task_results]
        return Results(model=info, rules=rules, versions=library_versions(), tasks=rows)

    return results(first, first_info), results(second, second_info | {"first_stage": first_info["name"],
                                                                        "top_k": top_k})
