"""The rerank side of the server: (query, documents, instruction) -> the prompts `Reranker.format_pairs` builds (in
a tokenizer thread), rows through the batcher (the model thread, `Reranker.pad` + `Reranker.forward`), then
p(yes) = sigmoid(z_yes - z_no) as `Reranker.score` computes it, so served scores are `score`'s scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qzhou.serving import errors
from qzhou.serving.batcher import Limits, Service

_NO_CUT = 10**9  # format_pairs' max_length when asking for the full prompt (to refuse over-long ones)


class RerankService(Service):
    def __init__(self, reranker: Any, limits: Limits, metrics: Any = None, max_client_batch: int = 256):
        super().__init__(self._run, limits, metrics, max_client_batch, "rerank")
        self.reranker = reranker
        reranker.model.eval()

    def tokenize(self, query: str, texts: list[str], instruction: str | None, truncate: bool,
                 field: str) -> list[list[int]]:
        """Prompt token ids per document. Over-long prompts are a 422 unless `truncate` (then the document's end
        is cut, as `Reranker.score` does)."""
        pairs = [(query, t) for t in texts]
        limit = self.reranker.max_length
        try:
            if truncate:
                return self.reranker.format_pairs(pairs, instruction)
            ids = self.reranker.format_pairs(pairs, instruction, max_length=_NO_CUT)
        except (ValueError, TypeError) as e:
            raise errors.invalid(f"field '{field}': {e}") from None
        for i, x in enumerate(ids):
            if len(x) > limit:
                raise errors.invalid(f"field '{field}[{i}]': the prompt has {len(x)} tokens, over the max length "
                                     f"{limit}; shorten it or set truncate")
        return ids

    async def score(self, query: str, texts: list[str], instruction: str | None = None, truncate: bool = True,
                    field: str = "documents") -> tuple[np.ndarray, np.ndarray, int]:
        """p(yes) and log-odds per document in input order, and the number of prompt tokens."""
        self.check_count(len(texts), field, "documents")
        ids, rows = await self.rows(self.tokenize, query, texts, instruction, truncate, field)
        z = torch.stack(rows)  # (n, 2): z_no, z_yes
        log_odds = z[:, 1] - z[:, 0]
        return torch.sigmoid(log_odds).numpy(), log_odds.numpy(), sum(map(len, ids))

    @torch.inference_mode()
    def _run(self, batch: list[list[int]]) -> list[torch.Tensor]:
        input_ids, mask = self.reranker.pad(batch)
        return list(self.reranker(input_ids, mask).cpu())

    async def warm_up(self) -> None:
        await self.score("warm up", ["warm up"])
