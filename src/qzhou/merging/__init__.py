"""Checkpoint merging (Qwen3-Embedding's stage 3, LM-Cocktail): slerp, multislerp, linear, task arithmetic, TIES
and DARE over safetensors model folders, streamed tensor by tensor, keeping the embedder's files.

    merge_checkpoints(paths, method, ..., out=...) -> MergeReport     (qzhou merge A B ... --out M)
    search_merge(paths, dev_tasks, ..., out=...) -> SearchReport       (qzhou merge A B ... --search --dev-tasks ...)
"""

from __future__ import annotations

from typing import Any

__all__ = ["METHODS", "MergeReport", "MergeSpec", "SearchReport", "merge_checkpoints", "merge_tensor", "search_merge"]


def __getattr__(name: str) -> Any:  # lazy: `import qzhou.merging` stays light
    if name in ("METHODS", "MergeSpec", "merge_tensor"):
        from qzhou.merging import methods

        return getattr(methods, name)
    if name in ("MergeReport", "merge_checkpoints"):
        from qzhou.merging import driver

        return getattr(driver, name)
    if name in ("SearchReport", "search_merge"):
        from qzhou.merging import search

        return getattr(search, name)
    raise AttributeError(name)
