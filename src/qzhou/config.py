"""The typed configuration of an embedder (the one config tree; training and evaluation configs join it later).

Choices are Literals with one spelling (`attention`, `pooling`); unknown keys are errors that name the key.
The resolved config is written as `qzhou_config.json` into every saved model folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

Attention = Literal["bidirectional", "causal"]
Pooling = Literal["mean", "last", "cls"]
PaddingSide = Literal["left", "right"]

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_QUERY_TEMPLATE = "Instruct: {task}\nQuery:{q}"
CONFIG_NAME = "qzhou_config.json"


class EmbedderConfig(BaseModel):
    """How a backbone becomes an embedder: attention mode, pooling, normalisation, lengths and instructions.

    `query_template` holds `{task}` and `{q}`; documents are encoded raw. `append_token` is the token that
    last-token pooling reads (Qwen3-Embedding: `<|endoftext|>`, id 151643, not `eos_token`); it is appended by
    the tokenizer's post-processor so that every runtime reading the saved tokenizer appends it too.
    """

    model_config = ConfigDict(extra="forbid")

    attention: Attention
    pooling: Pooling
    normalize: bool = True
    max_length: int = 8192
    padding_side: PaddingSide = "left"
    query_template: str = DEFAULT_QUERY_TEMPLATE
    default_task: str = DEFAULT_TASK
    append_token: str | None = None

    @field_validator("query_template")
    @classmethod
    def _template_has_fields(cls, v: str) -> str:
        if "{q}" not in v or "{task}" not in v:
            raise ValueError(f"query_template must contain {{task}} and {{q}} (got {v!r})")
        if v.count("{q}") != 1:
            raise ValueError(f"query_template must contain {{q}} exactly once (got {v!r})")
        return v

    @field_validator("max_length")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_length must be >= 1 (got {v})")
        return v

    def query_prefix(self, task: str | None = None) -> str:
        """The text put before a query: the template up to `{q}` with the task filled in."""
        prefix, _ = self.query_template.split("{q}")
        return prefix.replace("{task}", self.default_task if task is None else task)

    def query_suffix(self) -> str:
        return self.query_template.split("{q}")[1]

    def format_query(self, q: str, task: str | None = None) -> str:
        return self.query_prefix(task) + q + self.query_suffix()

    def prompts(self) -> dict[str, str]:
        """Named prompts in the sentence-transformers sense (prefix strings)."""
        return {"query": self.query_prefix(), "document": ""}

    def save(self, folder: str | Path) -> Path:
        from qzhou import __version__

        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps({"qzhou_version": __version__, **self.model_dump()}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> EmbedderConfig:
        path = Path(folder) / CONFIG_NAME
        raw = json.loads(path.read_text())
        raw.pop("qzhou_version", None)
        try:
            return cls(**raw)
        except ValidationError as e:
            raise ValueError(f"invalid {path}: {e}") from None
