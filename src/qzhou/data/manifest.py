"""A dataset manifest (YAML): which files feed training, their task type, instruction and batch size.

    datasets:
      - name: stsb
        path: data/stsb.jsonl          # relative to the manifest's folder
        task: sts
        instruction: Retrieve semantically similar text
        batch_size: 64                 # optional; the task default otherwise
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: Path
    task: Literal["retrieval", "sts", "classification"]
    instruction: str | None = None
    batch_size: int | None = None

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v):
        if v is not None and v < 1:
            raise ValueError(f"batch_size must be >= 1 (got {v})")
        return v


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[DatasetSpec]


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    try:
        manifest = Manifest(**(raw or {}))
    except (ValidationError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    names = [d.name for d in manifest.datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: dataset names must be unique (got {names})")
    for d in manifest.datasets:
        if not d.path.is_absolute():
            d.path = path.parent / d.path
        if not d.path.exists():
            raise FileNotFoundError(f"{path}: dataset {d.name!r}: {d.path} does not exist")
    return manifest
