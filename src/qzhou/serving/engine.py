"""The embedding side of the server: request options -> the same token ids `Embedder.encode` would build (in a
tokenizer thread), rows through the batcher (the model thread), then Matryoshka truncation and normalisation per
request (`pooling.finalize`, as `encode` does), so served vectors are `encode`'s vectors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qzhou.modeling.pooling import finalize
from qzhou.serving import errors
from qzhou.serving.batcher import Limits, Service


@dataclass
class EmbedOptions:
    instruction: str | None = None
    prompt_name: str | None = None
    task: str | None = None
    dimensions: int | None = None
    normalize: bool | None = None  # None: the model's own setting
    truncate: bool = False


class EmbedService(Service):
    """One embedder behind one batcher. `rules` picks which side of a `task` gets its instruction
    (`qzhou.instructions.instruction_for`)."""

    def __init__(self, embedder: Any, limits: Limits, metrics: Any = None, rules: str = "qzhou",
                 dimensions: list[int] | None = None, max_client_batch: int = 256):
        super().__init__(self._run, limits, metrics, max_client_batch, "embed")
        self.embedder, self.rules = embedder, rules
        declared = getattr(embedder.backbone.config, "matryoshka_dimensions", None)  # vLLM reads the same key
        self.dimensions = sorted(dimensions or declared or []) or None  # None: any size 1..hidden
        self.vocab = embedder.backbone.get_input_embeddings().num_embeddings

    # ------------------------------------------------------------------ description
    def supported_dimensions(self) -> str:
        h = self.embedder.hidden_size
        return ", ".join(map(str, self.dimensions)) if self.dimensions else f"any size from 1 to {h}"

    def check_dimensions(self, dim: int | None) -> None:
        h = self.embedder.hidden_size
        ok = dim is None or (dim in self.dimensions if self.dimensions else 1 <= dim <= h)
        if not ok:
            raise errors.ApiError(400, f"dimensions={dim} is not supported by this model; supported: "
                                       f"{self.supported_dimensions()}", "unsupported_dimensions")

    def resolve_instruction(self, o: EmbedOptions) -> tuple[str | None, str | None]:
        """(prompt_name, instruction) for `Embedder.tokenize`; `task` becomes the instruction its rules give
        the side named by prompt_name (query when not given), or none (the text stays raw)."""
        given = [k for k in ("instruction", "task") if getattr(o, k) is not None]
        if len(given) > 1 or (o.instruction is not None and o.prompt_name is not None):
            raise errors.invalid("give one of 'instruction', 'task', or 'prompt_name' alone ('task' may go with "
                                 "'prompt_name' to pick the side)", "conflicting_options")
        if o.task is None:
            return o.prompt_name, o.instruction
        from qzhou.instructions import instruction_for

        try:
            return None, instruction_for(o.task, o.prompt_name or "query", self.rules)
        except KeyError as e:
            raise errors.invalid(f"field 'task': {e.args[0]}", "unknown_task") from None

    # ------------------------------------------------------------------ work
    def tokenize(self, inputs: list[str] | list[list[int]], o: EmbedOptions, field: str) -> list[list[int]]:
        """Token ids for every input, checked: texts through `Embedder.tokenize` (template, max length),
        token-id lists checked against the vocabulary and the max length."""
        if inputs and isinstance(inputs[0], str):
            prompt_name, instruction = self.resolve_instruction(o)
            try:
                return self.embedder.tokenize(inputs, prompt_name=prompt_name, instruction=instruction,
                                              truncate=o.truncate)
            except (ValueError, TypeError) as e:
                raise errors.invalid(re.sub(r"^text (\d+)", rf"field '{field}[\1]':", str(e))) from None
        if o.instruction is not None or o.task is not None or o.prompt_name not in (None, "document"):
            raise errors.invalid(f"field '{field}': token ids are used as given; instructions and prompts apply "
                                 "to text inputs only (send text, or put the instruction's tokens in the ids)",
                                 "conflicting_options")
        limit, out = self.embedder.config.max_length, []
        for i, ids in enumerate(inputs):
            bad = next((t for t in ids if not 0 <= t < self.vocab), None)
            if bad is not None:
                raise errors.invalid(f"field '{field}[{i}]': token id {bad} is outside the vocabulary (0..{self.vocab - 1})")
            if len(ids) > limit and not o.truncate:
                raise errors.invalid(f"field '{field}[{i}]': {len(ids)} tokens, over the max length {limit}; "
                                     "shorten it or set truncate")
            out.append(list(ids[:limit]))
        return out

    async def embed(self, inputs: list[str] | list[list[int]], o: EmbedOptions,
                    field: str = "input") -> tuple[np.ndarray, int]:
        """(n, dim) float32 vectors in input order, and the number of prompt tokens."""
        self.check_count(len(inputs), field, "inputs")
        self.check_dimensions(o.dimensions)
        ids, rows = await self.rows(self.tokenize, inputs, o, field)
        normalize = self.embedder.config.normalize if o.normalize is None else o.normalize
        vectors = finalize(torch.stack(rows), o.dimensions, normalize)
        return vectors.numpy(), sum(len(x) for x in ids)

    def _run(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """The model thread: one padded forward; rows come back unnormalised and full size (finalize is per
        request, since requests in one batch may ask for different dimensions)."""
        return list(self.embedder.pooled_ids(batch))
