"""A qzhou `Reranker` under the `mteb` package (mteb 2.x's `CrossEncoderProtocol`), for two-stage evaluation the
way Qwen3 ran it: mteb retrieves with the embedder and saves its predictions, each retrieval task is turned into a
reranking of the top-k (`AbsTaskRetrieval.convert_to_reranking`), and the reranker scores those pairs.

- The reranker gets the task's query-side instruction (QZhou's or Qwen3's tables, `qzhou.instructions`) in the
  prompt's `<Instruct>`; its own default instruction under rules "none".
- `predict` returns the log-odds (the order of p(yes), and still distinct where p rounds to 1.0).
- `run_mteb_rerank` (`qzhou eval EMBEDDER --rerank RERANKER --mteb ...`) keeps the first stage's predictions and
  mteb result files in `runs_dir/mteb/<embedder>-<fingerprint>-<rules>/`; a later run with the same first stage
  reads them (the embedder is not called), so several rerankers rerank one candidate list.
- `mteb_rerank_scores` runs mteb's own retrieval protocol on a local task with a given first-stage run (nothing is
  downloaded), which is how `evaluation.rerank` is checked against mteb.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
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
                    runs_dir: str | Path = "out/runs", out: str | Path | None = None,
                    embedder_source: str | Path | None = None, reranker_source: str | Path | None = None,
                    extra: dict[str, dict[str, Any]] | None = None,
                    log: Callable[[str], None] | None = None) -> tuple[Results, Results]:
    """mteb benchmarks or tasks (data from the Hugging Face hub): the embedder retrieves on every Retrieval task
    with its predictions kept under `runs_dir` (`first_stage_folder`; a later run with the same embedder, rules
    and instructions reads them instead of embedding again), then each task is converted to a reranking of the
    top `top_k` and the reranker scores those pairs. mteb's own result files for the reranker go to `out/mteb`."""
    if top_k < 1:
        raise ValueError(f"--rerank-top-k must be positive (got {top_k})")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    first_info, second_info = describe_model(embedder, embedder_source), describe_model(reranker, reranker_source)
    encoder = QzhouMtebModel(embedder, rules, name=str(embedder_source) if embedder_source else None,
                             revision=first_info.get("revision") or first_info.get("fingerprint"), extra=extra)
    tasks = retrieval_tasks(names, log)
    folder = first_stage_folder(runs_dir, first_info, rules, extra)
    first = run_first_stage(encoder, tasks, folder)
    computed = {name for name, *_ in encoder.calls}
    model = QzhouMtebReranker(reranker, rules, name=str(reranker_source) if reranker_source else None,
                              revision=second_info.get("revision") or second_info.get("fingerprint"), extra=extra)
    converted = [t.convert_to_reranking(folder / "predictions", top_k=top_k) for t in tasks]
    second = mteb.evaluate(model, converted, cache=mteb.ResultCache(Path(out) / "mteb") if out else None,
                           overwrite_strategy="always")
    by_name = {t.metadata.name: t for t in tasks}
    first_rows = [_row(tr, by_name, instructions={s: encoder.instruction(by_name[tr.task_name].metadata,
                                                                        PromptType(s)) for s in ("query", "document")},
                       protocol={"first_stage_run": "computed" if tr.task_name in computed else "reused",
                                 "predictions": str(folder / "predictions" / by_name[tr.task_name]
                                                    .prediction_file_name)})
                  for tr in first.task_results]
    second_rows = [_row(tr, by_name, instructions={"reranker": model.instruction(by_name[tr.task_name].metadata)},
                        protocol={"rerank_top_k": top_k}) for tr in second.task_results]
    for a, b in zip(first_rows, second_rows, strict=True):
        log(f"{a.name:<28} {a.main_score}: first stage {100 * a.scores[a.main_score]:.2f} -> reranked top-{top_k} "
            f"{100 * b.scores[b.main_score]:.2f} (first-stage run {a.protocol['first_stage_run']})")
    versions = library_versions()
    return (Results(model=first_info, rules=rules, versions=versions, tasks=first_rows),
            Results(model=second_info | {"first_stage": first_info["name"], "top_k": top_k}, rules=rules,
                    versions=versions, tasks=second_rows))


def retrieval_tasks(names: Sequence[str], log: Callable[[str], None]) -> list[Any]:
    """The mteb Retrieval tasks among `names` (benchmarks or tasks); the others are logged as skipped."""
    tasks = []
    for t in get_mteb_tasks(names):
        if t.metadata.type == "Retrieval":
            tasks.append(t)
        else:
            log(f"{t.metadata.name}: an mteb {t.metadata.type} task; --mteb --rerank reranks Retrieval tasks, skipped")
    if not tasks:
        raise ValueError(f"--mteb {' '.join(names)}: none is (or holds) an mteb Retrieval task; nothing to rerank")
    return tasks


def first_stage_folder(runs_dir: str | Path, info: dict[str, Any], rules: str,
                       extra: dict[str, dict[str, Any]] | None) -> Path:
    """`runs_dir/mteb/<embedder>-<fingerprint>-<rules>[-<instructions hash>]`: one folder per first stage, so runs
    of other embedders, rules or instruction tables never read each other's predictions."""
    name = re.sub(r"[^\w.-]+", "_", Path(str(info["name"]).rstrip("/")).name) or "model"
    ident = str(info.get("fingerprint") or info.get("revision") or "local")[:12]
    tag = f"-{hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]}" if extra else ""
    return Path(runs_dir) / "mteb" / f"{name}-{ident}-{rules}{tag}"


def run_first_stage(encoder: QzhouMtebModel, tasks: list[Any], folder: Path) -> Any:
    """mteb's retrieval with the embedder, predictions saved in `folder/predictions`. Tasks whose predictions and
    mteb result file are both there are read back (mteb's only-missing cache); a task missing its predictions
    file is run again."""
    predictions = folder / "predictions"
    kept = [t for t in tasks if (predictions / t.prediction_file_name).is_file()]
    missing = [t for t in tasks if t not in kept]
    cache = mteb.ResultCache(folder / "mteb")
    results = []
    for group, strategy in ((kept, "only-missing"), (missing, "always")):
        if group:
            results += mteb.evaluate(encoder, group, cache=cache, overwrite_strategy=strategy,
                                     prediction_folder=predictions).task_results
    order = [t.metadata.name for t in tasks]
    return SimpleNamespace(task_results=sorted(results, key=lambda tr: order.index(tr.task_name)))


def _row(tr: Any, tasks: dict[str, Any], **extra: Any) -> TaskResult:
    """A qzhou TaskResult from mteb's: every metric averaged over the evaluated splits and subsets as mteb
    averages its main score (undefined ones, NaN in mteb's nAUC on tiny tasks, are left out: results.json is
    strict JSON)."""
    main = tasks[tr.task_name].metadata.main_score
    entries = [s for split in tr.scores.values() for s in split]
    keys = [k for k, v in entries[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and all(isinstance(e.get(k), (int, float)) for e in entries)] if entries else []
    scores = {k: float(tr.get_score(getter=lambda s, k=k: s[k])) for k in keys if k != "evaluation_time"}
    scores = {k: v for k, v in scores.items() if math.isfinite(v)}
    scores[main] = float(tr.get_score())
    return TaskResult(name=tr.task_name, type=tr.task_type, main_score=main, scores=scores, size=0,
                      seconds=round(tr.evaluation_time or 0.0, 2), origin=f"mteb {tr.mteb_version}", **extra)


def run_cli(a: Any, embedder: Any, reranker: Any, runs_dir: Path, out: Path) -> tuple[Results, Results]:
    """The `--mteb` part of `qzhou eval EMBEDDER --rerank RERANKER` (called by `evaluation.rerank.run_cli`)."""
    from qzhou.instructions import load_user_tasks

    extra = load_user_tasks(a.instructions) if a.instructions else None
    return run_mteb_rerank(embedder, reranker, a.mteb, a.rules, top_k=a.rerank_top_k, runs_dir=runs_dir, out=out,
                           embedder_source=a.model, reranker_source=a.rerank, extra=extra)
