"""The recipe's `merge:` stage (Qwen3-Embedding's stage 3): merge checkpoints an earlier training stage kept.

    stages:
      - {name: stage2, datasets: [...], steps: 200, checkpoint_every: 25, keep_checkpoints: 8}
      - name: stage3-merge
        merge: {stage: stage2, last: 8, method: slerp}            # fixed: chained slerp, equal shares
        # or: merge: {stage: stage2, search: {dev_tasks: [STSBenchmark, SICK-R], strategy: greedy}}

The stage's `final/` is the merged model (with merge.json, and the search table when searched), so a recipe
ends with it and a rerun skips it like any finished stage. The spec lives here, not in `training.recipe`, which
only puts it in the stages' union.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qzhou.merging.methods import METHODS

Method = Literal[METHODS]  # type: ignore[valid-type]  # the one list of methods


class MergeSearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dev_tasks: list[str] = Field(min_length=1)
    strategy: Literal["greedy", "grid"] = "greedy"
    grid: list[float] = [0.25, 0.5, 0.75]
    rules: Literal["qzhou", "qwen3", "none"] = "qzhou"
    data_root: str | None = None


class MergeOptions(BaseModel):
    """Which checkpoints (`stage`: default the previous stage; `last`: the newest N it kept, default all) and
    how: a fixed method with its parameters, or `search` (greedy soup / grid scored on dev tasks)."""

    model_config = ConfigDict(extra="forbid")

    stage: str | None = None
    last: int | None = Field(default=None, ge=1)
    method: Method | None = None
    weights: list[float] | None = None
    t: float | None = Field(default=None, ge=0.0, le=1.0)
    base: str | None = None
    density: float = Field(default=0.5, gt=0.0, le=1.0)
    lam: float = 1.0
    seed: int = 0
    search: MergeSearchSpec | None = None


class MergeStageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    merge: MergeOptions


def stage_checkpoints(stage_dir: Path, last: int | None) -> list[Path]:
    """The model folders of a stage's kept checkpoints, oldest first (the order chained slerp follows)."""
    from qzhou.training.saving import checkpoints  # (here: the recipe imports this module, saving loads torch)

    found = checkpoints(stage_dir)
    if last is not None:
        found = found[-last:]
    lora = [p for p in found if not (p / "model").is_dir()]
    if lora:
        raise ValueError(f"{lora[0]}: a checkpoint without model/ (LoRA with lora.merge_on_save false); "
                         "set lora.merge_on_save true to merge a LoRA run's checkpoints")
    if len(found) < 2:
        raise ValueError(f"merge stage: {stage_dir} holds {len(found)} checkpoint(s); set checkpoint_every and "
                         "keep_checkpoints (>= 2) on that stage so it keeps several")
    return [p / "model" for p in found]


def run_merge_stage(spec: MergeStageSpec, checkpoints_of: Path, stage_dir: Path) -> Path:
    """Merge the checkpoints kept in `checkpoints_of` into stage_dir/final; returns that folder."""
    from qzhou.merging.driver import merge_checkpoints
    from qzhou.merging.search import search_merge

    m = spec.merge
    paths = stage_checkpoints(checkpoints_of, m.last)
    final = stage_dir / "final"
    if final.is_dir() and not (final / "merge.json").is_file():  # an interrupted merge of this stage: redo it
        shutil.rmtree(final)
    stage_dir.mkdir(parents=True, exist_ok=True)
    options = dict(base=m.base, density=m.density, lam=m.lam, seed=m.seed)
    if m.search is not None:
        s = m.search
        search_merge(paths, s.dev_tasks, out=final, strategy=s.strategy, method=m.method, grid=s.grid,
                     rules=s.rules, data_root=s.data_root, **options)
    else:
        report = merge_checkpoints(paths, m.method or "slerp", out=final, weights=m.weights, t=m.t, **options)
        print(report.summary())
    return final
