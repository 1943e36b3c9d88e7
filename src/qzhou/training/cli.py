"""`qzhou train RECIPE [--set key=value ...]`: argument parsing only."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_train(a: argparse.Namespace) -> None:
    from qzhou.training.recipe import load_recipe
    from qzhou.training.trainer import train

    cfg = load_recipe(a.recipe, a.set or [])
    if a.output_dir:
        cfg.output_dir = Path(a.output_dir)
    final = train(cfg)
    print(f"trained model: {final}")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="run a training recipe (YAML): stage 1 retrieval, stage 2 all tasks")
    p.add_argument("recipe", help="training recipe YAML (see configs/; dataset paths are relative to it)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value (VALUE is YAML), e.g. stages.0.steps=100; repeatable")
    p.add_argument("--output-dir", default=None, help="where checkpoints and the final model go "
                   "(default: the recipe's output_dir)")
    p.set_defaults(func=cmd_train)
