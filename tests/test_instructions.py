"""The shipped instruction registry and the QZhou / Qwen3 rule sets (SYSTEMS.md §2.2, §2.3)."""

from __future__ import annotations

from collections import Counter

import pytest

from qzhou.instructions import SIMILAR, benchmark_tasks, builtin_registry, instruction_for, load_user_tasks


def test_registry_covers_both_benchmarks():
    eng, cmn = set(benchmark_tasks("MTEB(eng, v2)")), set(benchmark_tasks("MTEB(cmn, v1)"))
    assert (len(eng), len(cmn)) == (41, 31)
    tasks = builtin_registry()["tasks"]
    assert eng | cmn <= set(tasks)
    assert sum(tasks[t]["qzhou_symmetric"] for t in eng) == 34
    assert sum(tasks[t]["qzhou_symmetric"] for t in cmn) == 23
    assert Counter(tasks[t]["type"] for t in eng) == {"Retrieval": 10, "STS": 9, "Classification": 8,
                                                       "Clustering": 8, "PairClassification": 3,
                                                       "Reranking": 2, "Summarization": 1}
    with pytest.raises(KeyError, match="unknown benchmark"):
        benchmark_tasks("MTEB(xyz)")


def test_published_strings_are_exact():
    assert instruction_for("Banking77Classification", "query") == "Given a online banking query, find the corresponding intents"
    assert instruction_for("Ocnli", "query") == "Retrieve semantically similar text."
    assert instruction_for("TNews", "document") == "Classify the fine-grained category of the given news title"


def test_qzhou_rules():
    assert instruction_for("STS12", "document") == instruction_for("STS12", "query") == SIMILAR
    assert instruction_for("ArguAna", "document") is not None  # symmetric retrieval task
    assert instruction_for("FiQA2018", "query") and instruction_for("FiQA2018", "document") is None
    assert instruction_for("T2Retrieval", "document") is None


def test_qwen3_rules():
    assert instruction_for("Ocnli", "query", "qwen3") == SIMILAR  # no trailing period under Qwen3's rule
    assert instruction_for("FiQA2018", "document", "qwen3") is None
    assert instruction_for("ArguAna", "document", "qwen3") == builtin_registry()["tasks"]["ArguAna"]["qwen3"]["passage"]
    assert instruction_for("Banking77Classification", "document", "qwen3") == instruction_for("Banking77Classification", "query")


def test_unknown_task_and_bad_arguments():
    with pytest.raises(KeyError, match="no instruction for task"):
        instruction_for("MyTask", "query")
    with pytest.raises(ValueError, match="side"):
        instruction_for("STS12", "passage")
    with pytest.raises(ValueError, match="rules"):
        instruction_for("STS12", "query", "e5")


def test_user_task_file(tmp_path):
    f = tmp_path / "tasks.yaml"
    f.write_text("tasks:\n  Tickets:\n    type: Retrieval\n    instruction: Given a support ticket, find the fix\n"
                 "  Intents:\n    type: Classification\n    instruction: Classify the intent\n")
    extra = load_user_tasks(f)
    assert instruction_for("Tickets", "query", extra=extra) == "Given a support ticket, find the fix"
    assert instruction_for("Tickets", "document", extra=extra) is None
    assert instruction_for("Intents", "document", extra=extra) == "Classify the intent"
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": {"T": {"type": "Retrieval", "instrction": "x"}}}')
    with pytest.raises(ValueError, match=r"bad.json: task 'T': unknown field\(s\) \['instrction'\]"):
        load_user_tasks(bad)
    bad.write_text('{"tasks": {"T": {"type": "Ranking", "instruction": "x"}}}')
    with pytest.raises(ValueError, match="field 'type' must be one of"):
        load_user_tasks(bad)
