"""qzhou models under the `mteb` package (written against mteb 2.x's `EncoderProtocol`), with the per-task
instructions of QZhou's or Qwen3's evaluation scripts, so the named benchmarks ("MTEB(eng, v2)",
"MTEB(cmn, v1)", "MTEB(Multilingual, v2)", "MTEB(Code, v1)") score a qzhou model the way those papers did.

- Instructions come from `qzhou.instructions` (the published tables for MTEB(eng, v2) and MTEB(cmn, v1)) under
  the chosen rule set. A task missing there (most of Multilingual and all of Code) uses mteb's prompt for it (or
  mteb's task-type default) under the same rules; pass `extra` (a task file read by
  `qzhou.instructions.load_user_tasks`) to use other instructions, e.g. Qwen3's full table.
- mteb passes a prompt type per call: `document` is the document side; `query` and none (STS, pairs,
  classification, clustering) are the query side, as QZhou's and Qwen3's wrappers read it.
- Empty texts become "Null", as QZhou's evaluation scripts do (an embedder needs at least one token).

`mteb_scores` runs mteb's own task classes on a local task's data (injected; nothing is downloaded), which is how
the local metrics are checked against mteb's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import mteb
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("the mteb adapter needs mteb: pip install qzhou[eval]") from None

from qzhou.evaluation.report import Results, TaskResult, describe_model, library_versions
from qzhou.evaluation.tasks import Corpus, Labeled, LoadedTask, Pairs, TaskSpec
from qzhou.instructions import instruction_for

#: mteb task classes whose protocol a local task of each type runs under when checked against mteb
TEMPLATES = {"STS": "STSBenchmark", "PairClassification": "TwitterSemEval2015",
             "Classification": "Banking77Classification", "Clustering": "TwentyNewsgroupsClustering.v2",
             "Retrieval": "SciFact", "Reranking": "AskUbuntuDupQuestions"}


class QzhouMtebModel(AbsEncoder):
    """An mteb encoder around a qzhou `Embedder` (or anything with `encode(texts, instruction=...)`)."""

    def __init__(self, embedder: Any, rules: str = "qzhou", *, name: str | None = None, revision: str | None = None,
                 local_tasks: dict[str, TaskSpec] | None = None, extra: dict[str, dict[str, Any]] | None = None):
        if rules not in ("qzhou", "qwen3", "none"):
            raise ValueError(f"rules must be qzhou, qwen3 or none (got {rules!r})")
        self.embedder = embedder
        self.rules = rules
        self.local_tasks = local_tasks or {}  # mteb task name -> the local spec whose instruction applies
        self.extra = extra or {}  # a user's instruction table (qzhou.instructions.load_user_tasks) over the built-in
        self.calls: list[tuple[str, str, str | None, int]] = []  # (task, side, instruction, texts): a log
        self.mteb_model_meta = _model_meta(embedder, name, revision, rules)

    def instruction(self, task_metadata: Any, prompt_type: PromptType | None) -> str | None:
        side = "document" if prompt_type == PromptType.document else "query"
        if self.rules == "none":
            return None
        name = task_metadata.name
        if name in self.local_tasks:
            return self.local_tasks[name].instruction_for(side, self.rules)
        try:
            return instruction_for(name, side, self.rules, extra=self.extra)
        except KeyError:
            pass
        prompt = task_metadata.prompt
        if not prompt:
            from mteb.abstasks.abstask import get_abstask_prompt

            prompt = get_abstask_prompt(name)
        if isinstance(prompt, dict):  # mteb's per-side prompts; only both sides make it Qwen3-symmetric
            qzhou = prompt.get(side) or prompt.get("query", "")
            qwen3 = {"query": prompt.get("query", ""), "passage": prompt["document"]} if prompt.get("document") \
                else prompt.get("query", "")
        else:
            qzhou = qwen3 = prompt
        entry = {"type": task_metadata.type, "qzhou": qzhou or "", "qwen3": qwen3 or "",
                 "qzhou_symmetric": "Retrieval" not in task_metadata.type}
        return instruction_for(name, side, self.rules, extra={name: entry}) or None

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        texts = [t if t.strip() else "Null" for batch in inputs for t in batch["text"]]
        instruction = self.instruction(task_metadata, prompt_type)
        side = "document" if prompt_type == PromptType.document else "query"
        unique = list(dict.fromkeys(texts))  # each distinct text once per call
        self.calls.append((task_metadata.name, side, instruction, len(unique)))
        emb = np.asarray(self.embedder.encode(unique, instruction=instruction), dtype=np.float32)
        row = {t: i for i, t in enumerate(unique)}
        return emb[[row[t] for t in texts]]


def _model_meta(embedder: Any, name: str | None, revision: str | None, rules: str) -> ModelMeta:
    info = embedder.info() if callable(getattr(embedder, "info", None)) else {}
    if name is None or "/" not in name or Path(name).expanduser().exists():
        name = f"qzhou/{Path(str(name)).name if name else info.get('architecture', 'embedder')}"
    return ModelMeta(loader=None, name=name, revision=revision or "local", release_date=None, languages=None,
                     n_parameters=info.get("parameters"), memory_usage_mb=None, max_tokens=info.get("max_length"),
                     embed_dim=info.get("dimension"), license=None, open_weights=True, public_training_code=None,
                     public_training_data=None, framework=["PyTorch"], similarity_fn_name=ScoringFunction.COSINE,
                     use_instructions=rules != "none", training_datasets=None)


def get_mteb_tasks(names: Sequence[str]) -> list[Any]:
    """Benchmark names ("MTEB(eng, v2)") or task names -> mteb task objects (metadata only; data loads later)."""
    tasks: list[Any] = []
    for n in names:
        try:
            tasks += list(mteb.get_benchmark(n).tasks)
        except KeyError:
            try:
                tasks.append(mteb.get_task(n))
            except KeyError:
                raise ValueError(f"{n!r} is neither an mteb benchmark nor an mteb task; benchmarks include "
                                 "'MTEB(eng, v2)', 'MTEB(cmn, v1)', 'MTEB(Multilingual, v2)', 'MTEB(Code, v1)'") from None
    return tasks


def run_mteb(embedder: Any, names: Sequence[str], rules: str = "qzhou", *, out: str | Path | None = None,
             model_source: str | Path | None = None, batch_size: int = 32,
             extra: dict[str, dict[str, Any]] | None = None) -> Results:
    """Run mteb benchmarks or tasks (their data comes from the Hugging Face hub) and return qzhou Results;
    mteb's own per-task result files go to `out/mteb` when `out` is given. `extra`: instructions for tasks the
    built-in tables lack (e.g. Qwen3's full task_prompts.json turned into a task file)."""
    model_info = describe_model(embedder, model_source)
    model = QzhouMtebModel(embedder, rules, name=str(model_source) if model_source else None,
                           revision=model_info.get("revision") or model_info.get("fingerprint"), extra=extra)
    cache = mteb.ResultCache(Path(out) / "mteb") if out else None
    result = mteb.evaluate(model, get_mteb_tasks(names), cache=cache, overwrite_strategy="always",
                           encode_kwargs={"batch_size": batch_size})
    tasks = []
    for tr in result.task_results:
        main = tr.task.metadata.main_score
        tasks.append(TaskResult(name=tr.task_name, type=tr.task_type, main_score=main, scores={main: tr.get_score()},
                                size=0, seconds=round(tr.evaluation_time or 0.0, 2), origin=f"mteb {tr.mteb_version}",
                                instructions={s: model.instruction(tr.task.metadata, PromptType(s))
                                              for s in ("query", "document")}))
    return Results(model=model_info, rules=rules, versions=library_versions(), tasks=tasks)


# ------------------------------------------------------------------------------------------------ local data
def inject(task: Any, loaded: LoadedTask) -> Any:
    """Put a local task's data (split "test") and protocol options into an mteb task object, so that mteb's
    own `evaluate` scores it without downloading anything."""
    from datasets import Dataset, DatasetDict

    d, spec = loaded.data, loaded.spec
    if isinstance(d, Pairs):
        if spec.type == "STS":
            c1, c2 = task.column_names
            rows = {c1: d.text1, c2: d.text2, "score": d.values.tolist()}
        else:
            rows = {task.input1_column_name: d.text1, task.input2_column_name: d.text2,
                    task.label_column_name: d.values.astype(int).tolist()}
        task.dataset = DatasetDict({"test": Dataset.from_dict(rows)})
    elif isinstance(d, Labeled) and spec.type == "Classification":
        opts = spec.protocol_options()
        from sklearn.linear_model import LogisticRegression

        def part(x: Labeled) -> Dataset:
            return Dataset.from_dict({task.input_column_name: x.texts, task.label_column_name: x.labels})

        task.dataset = DatasetDict({"train": part(loaded.train), "test": part(d)})
        task.n_experiments, task.samples_per_label = opts.n_experiments, opts.samples_per_label
        task.evaluator_model = LogisticRegression(max_iter=opts.max_iter)
        task.seed = opts.seed
    elif isinstance(d, Labeled):
        opts = spec.protocol_options()
        task.dataset = DatasetDict({"test": Dataset.from_dict({task.input_column_name: d.texts,
                                                               task.label_column_name: d.labels})})
        task.max_fraction_of_documents_to_embed = opts.max_fraction
        task.max_document_to_embed = opts.max_documents
        task.max_documents_per_cluster, task.n_clusters = opts.cluster_size, opts.n_experiments
        task.k_mean_batch_size, task.seed, task.rng_state = opts.batch_size, opts.seed, random.Random(opts.seed)
    elif isinstance(d, Corpus):
        corpus = Dataset.from_dict({"id": list(d.docs), "text": list(d.docs.values()), "title": [""] * len(d.docs)})
        queries = Dataset.from_dict({"id": list(d.queries), "text": list(d.queries.values())})
        task.dataset = {"default": {"test": {"corpus": corpus, "queries": queries, "top_ranked": d.candidates,
                                             "relevant_docs": {q: dict(r) for q, r in d.qrels.items()}}}}
    task.data_loaded = True
    return task


def mteb_scores(embedder: Any, loaded: LoadedTask, rules: str = "qzhou") -> dict[str, float]:
    """mteb's scores for a local task: its data in mteb's task class for that type, the embedder through
    `QzhouMtebModel` with the local task's instructions."""
    template = TEMPLATES[loaded.spec.type]
    task = inject(mteb.get_task(template), loaded)
    model = QzhouMtebModel(embedder, rules, local_tasks={template: loaded.spec})
    scores = task.evaluate(model, "test", encode_kwargs={"batch_size": 32, "show_progress_bar": False})
    return dict(scores["default"])
