"""The dataset schema, one model for manifests and training recipes: which files feed training, their task,
instruction and batch size. A manifest (YAML) is a recipe's `datasets:` list alone:

    datasets:
      - name: stsb
        path: data/stsb.jsonl          # relative to the manifest's (or recipe's) folder
        task: sts                      # a registered training objective (qzhou.training.objectives)
        instruction: Retrieve semantically similar text   # or a list of wordings, one per record
        batch_size: 64                 # optional; the recipe's per-task default otherwise

`load_records` reads a dataset's records exactly as training does (`qzhou data sample` and the trainer share it).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: Path
    task: str
    instruction: str | list[str] | None = None  # a list: paraphrases, one per record (objectives.pick_instruction)
    batch_size: int | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from qzhou.training.objectives import known_tasks

        tasks = known_tasks()
        if v not in tasks:
            raise ValueError(f"task must be one of {', '.join(tasks)} (got {v!r})")
        return v

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v):
        if v is not None and v < 1:
            raise ValueError(f"batch_size must be >= 1 (got {v})")
        return v

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if isinstance(self.instruction, list) and (not self.instruction or not all(self.instruction)):
            raise ValueError(f"dataset {self.name!r}: `instruction` list must hold non-empty strings")
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[DatasetSpec]


def resolve_paths(specs: list[DatasetSpec], folder: Path) -> None:
    """Relative dataset paths are relative to the file that names them (`folder`)."""
    for d in specs:
        if not d.path.is_absolute():
            d.path = (folder / d.path).resolve()


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
    resolve_paths(manifest.datasets, path.parent)
    for d in manifest.datasets:
        if not d.path.exists():
            raise FileNotFoundError(f"{path}: dataset {d.name!r}: {d.path} does not exist")
    return manifest


def load_records(spec: DatasetSpec) -> list[dict]:
    """A dataset's records, each checked against its objective's record shape; the first bad one stops with its
    file, line and field."""
    from qzhou.data.readers import DataError, read_rows
    from qzhou.data.records import check_record
    from qzhou.training.objectives import objective_for

    schema = objective_for(spec.task).record_schema
    records = []
    for where, rec in read_rows(spec.path):
        _, errors, _ = check_record(rec, schema)
        if errors:
            field, message = errors[0]
            raise DataError(f"{where}: field {field!r} {message} (clean it with `qzhou data validate --clean`)")
        records.append(rec)
    if not records:
        raise DataError(f"{spec.path}: no records")
    return records
