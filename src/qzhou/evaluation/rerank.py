"""Two-stage evaluation, as Qwen3 evaluated its rerankers: an embedder retrieves, a reranker reorders the first
stage's top-k, and both stages are scored with the same metrics and reported side by side.

    evaluate_rerank(embedder, reranker, tasks, top_k=100, runs_dir=...) -> (first_stage, reranked) Results
    qzhou eval EMBEDDER --rerank RERANKER --rerank-top-k 100 --tasks cisi trecqa
    qzhou eval EMBEDDER --rerank RERANKER --mteb SciFact NFCorpus     (first stage through mteb: mteb_rerank)

The first stage's run (query -> {doc: score}, the top 1000 as mteb keeps) is written to `runs_dir/<task>.json`
with what produced it (embedder fingerprint, instruction rules, data checksums); a later evaluation with the same
first stage reads it instead of embedding again, so several rerankers are compared on exactly one candidate list.
Documents below the top-k keep their first-stage order under the reranked ones, so Recall@1000 stays comparable.
The reranker's log-odds of the top-k are kept too (`runs_dir/reranked/`, keyed by the reranker's content
fingerprint, dtype, max length, top-k and instruction), so re-reporting or fusing them scores nothing twice.

`fusion="rrf"` (`--rerank-fusion rrf`) ranks each query's top-k by reciprocal rank fusion of the two stages
(Cormack, Clarke & Buettcher, SIGIR 2009: sum over the stages of 1 / (60 + rank)) instead of by the reranker alone:
the usual guard when the reranker is not clearly stronger than the first stage.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from qzhou.evaluation import metrics
from qzhou.evaluation.report import Results, TaskResult, compare, describe_model, library_versions, plot
from qzhou.evaluation.runner import MAIN_SCORE, RULES, EmbeddingCache, retrieval_run
from qzhou.evaluation.tasks import Corpus, LoadedTask, load_task, resolve_tasks

RERANK_TYPES = ("Retrieval", "Reranking")
FUSIONS = ("none", "rrf")
RRF_K = 60  # the constant of Cormack et al. (2009), as Elasticsearch, OpenSearch and Pyserini default
Run = dict[str, dict[str, float]]


def rerank_scores(reranker: Any, task: LoadedTask, first: Run, k: int, instruction: str | None,
                  show_progress: bool = False) -> Run:
    """The reranker's log-odds for each query's first-stage top `k` (all pairs in one call, so the token-budget
    batches span queries)."""
    data: Corpus = task.data  # type: ignore[assignment]
    heads = {qid: metrics.ranked(docs)[:k] for qid, docs in first.items()}
    pairs = [(data.queries[qid], data.docs[doc]) for qid, head in heads.items() for doc in head]
    _, logits = reranker.score(pairs, instruction=instruction, return_logits=True, show_progress=show_progress)
    out: Run = {}
    pos = 0
    for qid, head in heads.items():
        out[qid] = {doc: float(z) for doc, z in zip(head, logits[pos:pos + len(head)], strict=True)}
        pos += len(head)
    return out


def reranked_run(first: Run, scores: Run, k: int) -> Run:
    """Each query's top `k` by the reranker's `scores`; the rest follow in first-stage order below them."""
    return {qid: _with_tail(dict(scores[qid]), metrics.ranked(docs)[k:]) for qid, docs in first.items()}


def fuse_rrf(first: Run, scores: Run, k: int, constant: int = RRF_K) -> Run:
    """Each query's first-stage top `k` ordered by reciprocal rank fusion of the two stages, 1 / (constant + rank in
    the first stage) + 1 / (constant + rank by the reranker's `scores`) (ranks from 1); the rest follow in
    first-stage order."""
    out: Run = {}
    for qid, docs in first.items():
        order = metrics.ranked(docs)
        head = order[:k]
        by_reranker = {doc: n for n, doc in enumerate(metrics.ranked({d: scores[qid][d] for d in head}), start=1)}
        fused = {doc: 1.0 / (constant + n) + 1.0 / (constant + by_reranker[doc]) for n, doc in enumerate(head, 1)}
        out[qid] = _with_tail(fused, order[k:])
    return out


def _with_tail(head: dict[str, float], tail: Sequence[str]) -> dict[str, float]:
    """`head` with the `tail` documents added below its lowest score, in the tail's order."""
    floor = min(head.values(), default=0.0) - 1.0
    head.update({doc: floor - n for n, doc in enumerate(tail)})
    return head


def cached_run(path: Path, key: dict[str, Any], make: Callable[[], Run]) -> tuple[Run, bool]:
    """(run, reused): the run stored at `path` when it was made with `key`, else a new one written there."""
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno} ({e.msg}); delete it to recompute") from None
        if stored.get("key") == key:
            return stored["run"], True
    run = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps({"key": key, "run": run}, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return run, False


def _task_result(task: LoadedTask, scores: dict[str, float], seconds: float, **extra: Any) -> TaskResult:
    spec = task.spec
    return TaskResult(name=spec.name, type=spec.type, main_score=MAIN_SCORE[spec.type], scores=scores,
                      size=task.size, split=spec.split, language=spec.language, seconds=round(seconds, 2),
                      origin=spec.origin, files=task.files, **extra)


def evaluate_rerank(embedder: Any, reranker: Any, tasks: Sequence[str | Path], rules: str = "qzhou", *,
                    top_k: int = 100, fusion: str = "none", data_root: str | Path | None = None,
                    runs_dir: str | Path = "out/runs", embedder_source: str | Path | None = None,
                    reranker_source: str | Path | None = None, show_progress: bool = False,
                    log: Callable[[str], None] | None = None) -> tuple[Results, Results]:
    """Score the first stage (`embedder`) and the reranked run (`reranker`, anything with `score(pairs,
    instruction=..., return_logits=True)`; with `fusion="rrf"`, fused with the first stage) on the Retrieval and
    Reranking tasks among `tasks`. The reranker gets each task's query instruction under `rules` (its own default
    instruction under "none")."""
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(RULES)} (got {rules!r})")
    if top_k < 1:
        raise ValueError(f"--rerank-top-k must be positive (got {top_k})")
    if fusion not in FUSIONS:
        raise ValueError(f"--rerank-fusion must be one of {', '.join(FUSIONS)} (got {fusion!r})")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    specs = [s for t in tasks for s in resolve_tasks([str(t)], data_root)]
    kept = [s for s in specs if s.type in RERANK_TYPES]
    for s in specs:
        if s.type not in RERANK_TYPES:
            log(f"{s.name}: a {s.type} task; reranking evaluates {' and '.join(RERANK_TYPES)} tasks only, skipped")
    if not kept:
        raise ValueError(f"none of the tasks is a {' or '.join(RERANK_TYPES)} task; nothing to rerank")
    first_model = describe_model(embedder, embedder_source)
    second_model = describe_model(reranker, reranker_source) | {"first_stage": first_model["name"], "top_k": top_k}
    if fusion != "none":
        second_model["fusion"] = fusion
    stages = _Stages(EmbeddingCache(embedder), reranker, first_model, second_model, rules, top_k, fusion,
                     Path(runs_dir), show_progress)
    first_results, second_results = [], []
    for task in (load_task(s) for s in kept):
        first, second = stages.evaluate(task)
        first_results.append(first)
        second_results.append(second)
        main = MAIN_SCORE[task.spec.type]
        log(f"{task.spec.name:<28} {main}: first stage {100 * first.scores[main]:.2f} -> reranked top-{top_k}"
            f"{' (rrf)' if fusion == 'rrf' else ''} {100 * second.scores[main]:.2f} (first-stage run "
            f"{first.protocol['first_stage_run']}, reranker scores {second.protocol['reranker_run']})")
    versions = library_versions()
    return (Results(model=first_model, rules=rules, versions=versions, tasks=first_results),
            Results(model=second_model, rules=rules, versions=versions, tasks=second_results))


class _Stages:
    """One task through both stages, each stage's run read from `runs_dir` when it was made the same way."""

    def __init__(self, cache: EmbeddingCache, reranker: Any, first_model: dict, second_model: dict, rules: str,
                 top_k: int, fusion: str, runs_dir: Path, show_progress: bool):
        self.cache, self.reranker, self.rules, self.top_k, self.fusion = cache, reranker, rules, top_k, fusion
        self.first_model, self.second_model = first_model, second_model
        self.runs_dir, self.show_progress = runs_dir, show_progress

    def evaluate(self, task: LoadedTask) -> tuple[TaskResult, TaskResult]:
        key = {"task": task.spec.name, "files": task.files, "rules": self.rules, "embedder": self.first_model["name"],
               "fingerprint": self.first_model["fingerprint"], "depth": max(metrics.K_VALUES)}
        start, before = time.perf_counter(), self.cache.encoded
        first, reused = cached_run(self.runs_dir / f"{task.spec.name}.json", key,
                                   lambda: retrieval_run(task, self.cache, self.rules))
        qrels = task.data.qrels  # type: ignore[union-attr]
        mid = time.perf_counter()
        instruction = task.spec.instruction_for("query", self.rules)
        scores, reranker_reused = self.reranker_scores(task, first, key, instruction)
        fuse = fuse_rrf if self.fusion == "rrf" else reranked_run
        second = fuse(first, scores, self.top_k)
        first_result = _task_result(task, metrics.retrieval_scores(first, qrels), mid - start,
                                    texts_embedded=self.cache.encoded - before,
                                    instructions={s: task.spec.instruction_for(s, self.rules)
                                                  for s in ("query", "document")},
                                    protocol={"first_stage_run": "reused" if reused else "computed"})
        pairs = sum(min(self.top_k, len(r)) for r in first.values())
        second_result = _task_result(task, metrics.retrieval_scores(second, qrels), time.perf_counter() - mid,
                                     instructions={"reranker": instruction},
                                     protocol={"rerank_top_k": self.top_k, "pairs": pairs, "fusion": self.fusion,
                                               "reranker_run": reranker_reused})
        return first_result, second_result

    def reranker_scores(self, task: LoadedTask, first: Run, first_key: dict,
                        instruction: str | None) -> tuple[Run, str]:
        """(the reranker's log-odds of each query's top-k, "reused" | "computed" | "not kept"): kept only for a
        reranker read from files (a content fingerprint), since an in-memory model's weights cannot be told apart."""
        make = partial(rerank_scores, self.reranker, task, first, self.top_k, instruction, self.show_progress)
        model = self.second_model
        if model.get("fingerprint") is None:
            return make(), "not kept"
        key = {"first_stage": first_key, "reranker": model["name"], "fingerprint": model["fingerprint"],
               "dtype": model.get("dtype"), "max_length": getattr(self.reranker, "max_length", None),
               "top_k": self.top_k, "instruction": instruction}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        run, reused = cached_run(self.runs_dir / "reranked" / f"{task.spec.name}-{digest}.json", key, make)
        return run, "reused" if reused else "computed"


def save_rerank_report(first: Results, reranked: Results, out: str | Path) -> dict[str, Path]:
    """first_stage/ and reranked/ (results.json, .md, .png each), plus rerank.md and rerank.png side by side."""
    out = Path(out)
    paths = {f"first_stage_{k}": v for k, v in first.save(out / "first_stage").items()}
    paths |= {f"reranked_{k}": v for k, v in reranked.save(out / "reranked").items()}
    labels = ["first stage", f"reranked top-{reranked.model.get('top_k')}"]
    table = compare([first, reranked], labels)
    paths["markdown"] = out / "rerank.md"
    paths["markdown"].write_text(f"## qzhou eval --rerank: {first.model['name']} -> {reranked.model['name']}\n\n"
                                 + table, encoding="utf-8")
    try:
        paths["plot"] = plot([first, reranked], out / "rerank.png", labels)
    except ImportError as e:
        print(f"qzhou eval: no chart written ({e})", file=sys.stderr)
    return paths


def run_cli(a: Any, embedder: Any, out: Path) -> None:
    """`qzhou eval EMBEDDER --rerank RERANKER --rerank-top-k K --tasks ... --mteb ...` (called by `evaluation.cli`,
    which has checked the flags before loading the embedder): local tasks and mteb tasks in one report."""
    from qzhou import Reranker

    reranker = Reranker.load(a.rerank, dtype=a.dtype, device=a.device)
    runs_dir = Path(a.first_stage_runs) if a.first_stage_runs else out / "runs"
    parts = []
    if a.tasks:
        parts.append(evaluate_rerank(embedder, reranker, a.tasks, a.rules, top_k=a.rerank_top_k,
                                     fusion=a.rerank_fusion, data_root=a.data_root, runs_dir=runs_dir,
                                     embedder_source=a.model, reranker_source=a.rerank, show_progress=True))
    if a.mteb:
        from qzhou.evaluation import mteb_rerank

        parts.append(mteb_rerank.run_cli(a, embedder, reranker, runs_dir, out))
    first, reranked = parts[0]
    for more_first, more_reranked in parts[1:]:
        first.tasks += more_first.tasks
        reranked.tasks += more_reranked.tasks
    paths = save_rerank_report(first, reranked, out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
