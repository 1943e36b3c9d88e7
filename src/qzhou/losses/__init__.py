"""Losses as pure functions on embeddings (scalar out); the formula, shapes and source are in each docstring."""

from qzhou.losses.classification import class_masked_infonce
from qzhou.losses.cosent import cosent
from qzhou.losses.infonce import qwen3_infonce, qzhou_infonce

__all__ = ["class_masked_infonce", "cosent", "qwen3_infonce", "qzhou_infonce"]
