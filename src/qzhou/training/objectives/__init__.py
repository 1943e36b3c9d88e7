"""Training objectives, one module per task (see `base.py`). Importing the package imports every module in it, so
a new task is one new file: its `@register` class is then found by `objective_for(task)`."""

from __future__ import annotations

import importlib
import pkgutil

from qzhou.training.objectives.base import (
    REGISTRY,
    LossConfig,
    Objective,
    Role,
    known_tasks,
    objective_for,
    pick_instruction,
    register,
    text_key,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from qzhou.training.objectives.classification import classification_loss  # noqa: E402
from qzhou.training.objectives.retrieval import retrieval_loss  # noqa: E402
from qzhou.training.objectives.sts import sts_loss  # noqa: E402

__all__ = ["REGISTRY", "LossConfig", "Objective", "Role", "classification_loss", "known_tasks", "objective_for",
           "pick_instruction", "register", "retrieval_loss", "sts_loss", "text_key"]
