"""Evaluation: MTEB's metrics and protocols on local task files, an adapter that runs qzhou models under `mteb`,
and reports (JSON, markdown, PNG, side-by-side comparison).

`evaluate(embedder, tasks, rules=...)` is the library entry point; `qzhou eval` only parses and calls it.
Heavy dependencies (scikit-learn, faiss, matplotlib, mteb) are imported where they are used; install them with
`pip install qzhou[eval]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qzhou.evaluation.report import Results
    from qzhou.evaluation.tasks import TaskSpec

__all__ = ["Results", "TaskSpec", "evaluate", "load_task", "resolve_tasks"]


def __getattr__(name: str) -> Any:
    # lazy, so `import qzhou.evaluation` stays light and cheap
    if name == "evaluate":
        from qzhou.evaluation.runner import evaluate

        return evaluate
    if name == "Results":
        from qzhou.evaluation.report import Results

        return Results
    if name in ("TaskSpec", "load_task", "resolve_tasks"):
        from qzhou.evaluation import tasks

        return getattr(tasks, name)
    raise AttributeError(name)
