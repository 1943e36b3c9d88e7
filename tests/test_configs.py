"""Every shipped recipe loads and validates (unknown keys, unknown dataset names and bad values are errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qzhou.training.recipe import load_recipe

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_loads(path):
    cfg = load_recipe(path)
    assert cfg.stages and all(s.steps > 0 for s in cfg.stages)
    if len(cfg.stages) > 1:
        assert set(cfg.stages[0].datasets) <= set(cfg.stages[1].datasets)  # stage 2 keeps stage 1's data


def test_there_are_recipes():
    assert {p.name for p in CONFIGS} >= {"qzhou-embedding.yaml", "qwen3-embedding.yaml", "quickstart-cpu.yaml"}


def test_qwen3_recipe_keeps_stage2_checkpoints_for_merging():
    cfg = load_recipe(Path(__file__).resolve().parents[1] / "configs" / "qwen3-embedding.yaml")
    stage2 = cfg.stages[1]
    assert (cfg.checkpoint_every_of(stage2), cfg.keep_checkpoints_of(stage2)) == (500, 5)
    assert (cfg.checkpoint_every_of(cfg.stages[0]), cfg.keep_checkpoints_of(cfg.stages[0])) == (1000, 2)
