"""Per-task instructions for MTEB(eng, v2) (41 tasks) and MTEB(cmn, v1) (31 tasks), shipped as `tasks.json`
(sources and commits in its `_source` field), with the two published rule sets for which side gets one:

qzhou: the task's instruction on queries; on documents too for symmetric tasks (every Classification,
       Clustering, STS, PairClassification, Reranking and Summarization task, ArguAna and two CQADupstack
       tasks in English; everything but retrieval in Chinese). (QZhou `run_mteb_all_v2.py`, `run_cmteb_all.py`)
qwen3: `Qwen3Embedding.get_instruction`: dict values pick by side and make the task symmetric; retrieval
       documents stay bare; STS and pair classification always use "Retrieve semantically similar text";
       bitext mining "Retrieve parallel sentences"; everything else gets the task instruction on all texts.

Users add or override tasks with a YAML/JSON file: `{tasks: {Name: {type, instruction, symmetric?}}}`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Rules = Literal["qzhou", "qwen3"]
Side = Literal["query", "document"]
TASK_TYPES = ("Retrieval", "STS", "Classification", "Clustering", "PairClassification", "Reranking",
              "Summarization", "BitextMining", "InstructionRetrieval", "MultilabelClassification")
SIMILAR = "Retrieve semantically similar text"


@cache
def builtin_registry() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("tasks.json").read_text(encoding="utf-8"))


def benchmark_tasks(benchmark: str) -> list[str]:
    benches = builtin_registry()["benchmarks"]
    if benchmark not in benches:
        raise KeyError(f"unknown benchmark {benchmark!r}; known: {', '.join(benches)}")
    return list(benches[benchmark])


def symmetric_type(task_type: str) -> bool:
    """Whether a task type puts its instruction on documents too (qzhou rules): every type but Retrieval. The one
    rule that user task files (default `symmetric`) and training (`instructed_sides`) both read."""
    return task_type != "Retrieval"


def instructed_sides(task_type: str) -> frozenset[Side]:
    """The sides that carry the instruction when training on a task type (qzhou rules): queries only for
    Retrieval, both sides for symmetric types (STS, Classification, ...). Training objectives call this so that
    what the model is trained on and what evaluation feeds it cannot drift apart."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    return frozenset({"query", "document"}) if symmetric_type(task_type) else frozenset({"query"})


def load_user_tasks(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a user's task file; errors name the file, the task and the field."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'tasks' mapping of task name -> {{type, instruction}}")
    tasks = {}
    for name, entry in data["tasks"].items():
        where = f"{path}: task {name!r}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with 'type' and 'instruction'")
        unknown = set(entry) - {"type", "instruction", "symmetric", "qwen3"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: type, instruction, symmetric, qwen3")
        if entry.get("type") not in TASK_TYPES:
            raise ValueError(f"{where}: field 'type' must be one of {', '.join(TASK_TYPES)} (got {entry.get('type')!r})")
        if not isinstance(entry.get("instruction"), str):
            raise ValueError(f"{where}: field 'instruction' must be a string")
        default_sym = symmetric_type(entry["type"])
        tasks[name] = {"type": entry["type"], "qzhou": entry["instruction"],
                       "qzhou_symmetric": bool(entry.get("symmetric", default_sym)),
                       "qwen3": entry.get("qwen3", entry["instruction"])}
    return tasks


def task_entry(task: str, extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    if extra and task in extra:
        return extra[task]
    tasks = builtin_registry()["tasks"]
    if task not in tasks:
        raise KeyError(f"no instruction for task {task!r}; add it in a task file (qzhou.instructions docstring)")
    return tasks[task]


def instruction_for(task: str, side: Side, rules: Rules = "qzhou",
                    extra: dict[str, dict[str, Any]] | None = None) -> str | None:
    """The instruction to put on a text of `task` on `side`, or None when that text stays raw."""
    if side not in ("query", "document"):
        raise ValueError(f"side must be 'query' or 'document' (got {side!r})")
    entry = task_entry(task, extra)
    if rules == "qzhou":
        return entry["qzhou"] if side == "query" or entry["qzhou_symmetric"] else None
    if rules != "qwen3":
        raise ValueError(f"rules must be 'qzhou' or 'qwen3' (got {rules!r})")
    value, kind = entry["qwen3"], entry["type"]
    symmetric = isinstance(value, dict)
    if symmetric:
        value = value["query" if side == "query" else "passage"]
    if "Retrieval" in kind and not symmetric and side == "document":
        return None
    if kind in ("STS", "PairClassification"):
        return SIMILAR
    if kind == "BitextMining":
        return "Retrieve parallel sentences"
    if "Retrieval" in kind and side == "query" and not value:
        return "Retrieval relevant passage for the given query."
    return value or None
