"""The rerank side of the server: (query, documents, instruction) -> the prompts `Reranker.prompt_ids` builds (in
a tokenizer thread), rows through the batcher (the model thread, `Reranker.forward_prompts`), then
p(yes) = sigmoid(z_yes - z_no) as `Reranker.score` computes it, so served scores are `score`'s scores.

A batch's prompts that share a query and instruction (one request's documents, or several requests for the same
query) share the prompt's prefix: with `prefix_cache` (the default, `qzhou serve --no-prefix-cache` turns it off)
the system turn, instruction and query are computed once per batch and the documents run against their keys and
values, exactly as `Reranker.score` does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qzhou.serving import errors
from qzhou.serving.batcher import Limits, Service

_NO_CUT = 10**9  # prompt_ids' max_length when asking for the full prompt (to refuse over-long ones)


@dataclass
class Prompt:
    """One document's prompt: token ids, the index of the document's first token, and the key of the prompts it may
    share a prefix with (instruction and query). Its length is the batcher's row length."""

    ids: list[int]
    start: int
    group: str

    def __len__(self) -> int:
        return len(self.ids)


class RerankService(Service):
    def __init__(self, reranker: Any, limits: Limits, metrics: Any = None, max_client_batch: int = 256,
                 prefix_cache: bool = True):
        super().__init__(self._run, limits, metrics, max_client_batch, "rerank")
        self.reranker, self.prefix_cache = reranker, prefix_cache
        self.reused_tokens = 0  # prompt tokens taken from a shared prefix instead of computed, since start
        reranker.model.eval()

    def tokenize(self, query: str, texts: list[str], instruction: str | None, truncate: bool,
                 field: str) -> list[Prompt]:
        """The prompt of each document. Over-long prompts are a 422 unless `truncate` (then the document's end is
        cut, as `Reranker.score` does)."""
        pairs = [(query, t) for t in texts]
        limit = self.reranker.max_length
        try:
            ids, starts = self.reranker.prompt_ids(pairs, instruction, None if truncate else _NO_CUT)
        except (ValueError, TypeError) as e:
            raise errors.invalid(f"field '{field}': {e}") from None
        for i, x in enumerate(ids):
            if len(x) > limit:
                raise errors.invalid(f"field '{field}[{i}]': the prompt has {len(x)} tokens, over the max length "
                                     f"{limit}; shorten it or set truncate")
        group = f"{instruction}\x00{query}"
        return [Prompt(x, start, group) for x, start in zip(ids, starts, strict=True)]

    async def score(self, query: str, texts: list[str], instruction: str | None = None, truncate: bool = True,
                    field: str = "documents") -> tuple[np.ndarray, np.ndarray, int]:
        """p(yes) and log-odds per document in input order, and the number of prompt tokens."""
        self.check_count(len(texts), field, "documents")
        ids, rows = await self.rows(self.tokenize, query, texts, instruction, truncate, field)
        z = torch.stack(rows)  # (n, 2): z_no, z_yes
        log_odds = z[:, 1] - z[:, 0]
        return torch.sigmoid(log_odds).numpy(), log_odds.numpy(), sum(map(len, ids))

    @torch.inference_mode()
    def _run(self, batch: list[Prompt]) -> list[torch.Tensor]:
        """(z_no, z_yes) per prompt; the batcher has already kept the batch within its token budget."""
        out, stats = self.reranker.forward_prompts([p.ids for p in batch], [p.start for p in batch],
                                                   [p.group for p in batch], batch_tokens=self.limits.max_batch_tokens,
                                                   prefix_cache=self.prefix_cache)
        self.reused_tokens += stats["reused_tokens"]
        return list(out)

    async def warm_up(self) -> None:
        await self.score("warm up", ["warm up"])
