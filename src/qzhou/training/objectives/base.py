"""What one kind of training is, in one class: which rows it embeds, which labels it keeps and which loss it takes.

The trainer knows no task names. For each dataset it asks the registry (`objective_for(task)`) for the task's
`Objective` and from then on only calls its four hooks:

- `build_model(cfg, source, first_stage)` (class method): the module trained. Default: the `Embedder`. Any module whose
  `forward(input_ids, attention_mask)` returns one row per input row works with the packer (the reranker's row
  is a yes-minus-no logit); `padding(model)` says how its rows are padded.
- `collate(records, instruction, part)`: -> (unpadded token ids per role, labels). Random choices are drawn for
  every record of the batch in the same order whatever `part` is, so processes together build exactly the batch
  one process would.
- `loss(embeddings_by_role, labels)`: the loss, gathering rows from every process itself (`training.distributed`).

Instruction placement comes from `qzhou.instructions.instructed_sides`, the rule evaluation reads too. A new
task is one module in this package (it registers itself with `@register`, and the package imports every module).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch

from qzhou.instructions import instructed_sides

Rows = dict[str, list[list[int]]]  # role -> token ids per row, unpadded
Labels = dict[str, torch.Tensor]


class Role(NamedTuple):
    name: str
    side: Literal["query", "document"]  # which side of the task the text is (instruction placement)
    length: Literal["query", "passage"]  # cut at the recipe's query_max_length or passage_max_length


@dataclass(frozen=True)
class LossConfig:
    retrieval: Literal["qzhou", "qwen3"] = "qzhou"
    tau: float = 0.02
    cosent_tau: float = 0.05
    margin: float = 0.1  # Qwen3's false-negative margin

    @classmethod
    def of(cls, cfg) -> LossConfig:
        return cls(retrieval=cfg.retrieval_loss, tau=cfg.tau, cosent_tau=cfg.cosent_tau, margin=cfg.margin)


def text_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=7).digest(), "little")


def pick_instruction(record: dict[str, Any], instruction: str | list[str] | None) -> str | None:
    """The record's own instruction, else the dataset's. A list of instructions (paraphrases of one task) gives each
    record one of them, chosen by a hash of its first text: the same choice on every process, in every epoch and
    after a resume, with no random state. Training on several wordings keeps the model from keying on one string,
    so an evaluation instruction it never saw still reads as that task."""
    chosen = record.get("instruction", instruction)
    if isinstance(chosen, list):
        first_text = record.get("query", record.get("text1", ""))
        return chosen[text_key(first_text) % len(chosen)]
    return chosen


def activation_checkpointing(model) -> None:
    """Gradient checkpointing on a transformers model (transformers 5 renames it activation checkpointing and
    deprecates the old name)."""
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()


def build_embedder(cfg, source: str, first_stage: bool):
    """The Embedder a stage trains: attention / pooling / layer cut on the first stage (later stages load the
    previous stage's folder, already set), gradient checkpointing and LoRA from the recipe."""
    from qzhou.modeling.embedder import Embedder

    kwargs = {"attention": cfg.model.attention, "pooling": cfg.model.pooling} if first_stage else {}
    e = Embedder.load(source, dtype="float32", device="cpu", **{k: v for k, v in kwargs.items() if v})
    if first_stage and cfg.model.layers and cfg.model.layers != e.backbone.config.num_hidden_layers:
        e.keep_layers(cfg.model.layers)  # (a resumed first stage loads its checkpoint: already cut)
    if cfg.model.gradient_checkpointing:
        activation_checkpointing(e.backbone)
    if cfg.lora is not None:
        e.backbone = wrap_lora(e.backbone, cfg.lora)
    return e


def wrap_lora(module, lora):
    """`module` (the transformers model a trained class wraps) with the recipe's LoRA adapters (peft); its own
    weights freeze. Gradient checkpointing, enabled before, keeps working: transformers' non-reentrant checkpoint
    needs no input gradients, and its enable step hooks the input embeddings to require them anyway."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("LoRA training needs peft: pip install qzhou[train]") from None
    return get_peft_model(module, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules))


class Objective:
    """One training task; subclasses set `task`, `task_type`, `record_schema`, `roles` and write `collate`/`loss`."""

    task: ClassVar[str]  # the dataset's `task` in recipes and manifests
    task_type: ClassVar[str]  # its type in qzhou.instructions (Retrieval, STS, Classification, ...)
    record_schema: ClassVar[str]  # which record shape its files hold (qzhou.data.records.check_record)
    retrieval: ClassVar[bool] = False  # counts towards a stage's retrieval_share
    roles: ClassVar[tuple[Role, ...]]  # in the loss's argument order

    def __init__(self, cfg, model, rng: random.Random):
        self.cfg, self.rng = cfg, rng
        self.tokenizer = model.tokenizer
        self.model_config = model.config
        self.loss_config = LossConfig.of(cfg)
        self.instructed = instructed_sides(self.task_type)

    @classmethod
    def build_model(cls, cfg, source: str, first_stage: bool):
        return build_embedder(cfg, source, first_stage)

    @classmethod
    def padding(cls, model) -> tuple[str, int]:
        """(padding side, pad token id) of the model's rows."""
        return model.config.padding_side, model.tokenizer.pad_token_id or 0

    def collate(self, records: list[dict[str, Any]], instruction: str | list[str] | None,
                part: slice | None = None) -> tuple[Rows, Labels]:
        raise NotImplementedError

    def loss(self, embeddings: dict[str, torch.Tensor], labels: Labels) -> torch.Tensor:
        raise NotImplementedError

    # helpers for subclasses -------------------------------------------------------------------------------------
    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)

    def text(self, role: str, text: str, instruction: str | None) -> str:
        """`text` as the model sees it in `role`: with the instruction where the task type puts one on that side."""
        if instruction and self.role(role).side in self.instructed:
            return self.model_config.format_query(text, instruction)
        return text

    def tokenize(self, role: str, texts: list[str]) -> list[list[int]]:
        limit = self.cfg.query_max_length if self.role(role).length == "query" else self.cfg.passage_max_length
        return self.tokenizer(texts, truncation=True, max_length=limit)["input_ids"] if texts else []


REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    if cls.task in REGISTRY and REGISTRY[cls.task] is not cls:
        raise ValueError(f"task {cls.task!r} is registered twice ({REGISTRY[cls.task].__module__}, {cls.__module__})")
    REGISTRY[cls.task] = cls
    return cls


def objective_for(task: str) -> type[Objective]:
    from qzhou.training import objectives  # noqa: F401  (imports every objective module, filling REGISTRY)

    if task not in REGISTRY:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(sorted(REGISTRY))} "
                         f"(a new task is a module in qzhou/training/objectives/)")
    return REGISTRY[task]


def known_tasks() -> list[str]:
    from qzhou.training import objectives  # noqa: F401

    return sorted(REGISTRY)
