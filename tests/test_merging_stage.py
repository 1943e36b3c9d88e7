"""The recipe's `merge:` stage: a training stage keeps checkpoints, the merge stage averages them into its final/,
and recipes naming a wrong stage fail at load time."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_trainer import recipe

from qzhou.training.recipe import load_recipe
from qzhou.training.trainer import train


def test_merge_stage_ends_the_recipe_with_the_merged_model(tmp_path, base_dirs):
    path = recipe(tmp_path, base_dirs["qwen2"])
    raw = yaml.safe_load(path.read_text())
    raw["stages"] = [{"name": "stage1", "datasets": ["ret"], "steps": 4, "lr": 1e-3, "checkpoint_every": 1,
                      "keep_checkpoints": 3},
                     {"name": "stage3-merge", "merge": {"method": "linear"}}]
    path.write_text(yaml.safe_dump(raw))
    final = train(load_recipe(path))
    out = tmp_path / "out"
    assert final == out / "stage3-merge" / "final" and (out / "stage3-merge" / "DONE").is_file()
    kept = [load_file(str(out / "stage1" / f"checkpoint-{s}" / "model" / "model.safetensors")) for s in (2, 3, 4)]
    got = load_file(str(final / "model.safetensors"))
    for k in got:
        torch.testing.assert_close(got[k], (kept[0][k] + kept[1][k] + kept[2][k]) / 3)
    assert (final / "qzhou_config.json").is_file() and (final / "merge.json").is_file()
    assert train(load_recipe(path)) == final  # a rerun skips finished stages, the merge included


@pytest.mark.parametrize("stages, message", [
    ([{"name": "m", "merge": {}}], "merge.stage must name an earlier training stage"),
    ([{"name": "s", "datasets": ["ret"], "steps": 2}, {"name": "m", "merge": {"stage": "nope"}}], "'nope'"),
    ([{"name": "s", "datasets": ["ret"], "steps": 2}, {"name": "m", "merge": {"methd": "slerp"}}], "methd"),
])
def test_bad_merge_stages_fail_when_the_recipe_loads(tmp_path, base_dirs, stages, message):
    path = recipe(tmp_path, base_dirs["qwen2"])
    raw = yaml.safe_load(path.read_text())
    raw["stages"] = stages
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        load_recipe(path)
