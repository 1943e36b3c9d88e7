"""The rerank side of the server: (query, documents, instruction) -> the prompts `Reranker.format_pairs` builds (in
a tokenizer thread), rows through the batcher (the model thread, `Reranker.pad` + `Reranker.forward`), then
p(yes) = sigmoid(z_yes - z_no) as `Reranker.score` computes it, so served scores are `score`'s scores."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from qzhou.serving import errors
from qzhou.serving.batcher import Batcher, Limits

_NO_CUT = 10**9  # format_pairs' max_length when asking for the full prompt (to refuse over-long ones)


class RerankService:
    def __init__(self, reranker: Any, limits: Limits, metrics: Any = None, max_client_batch: int = 256):
        self.reranker, self.limits, self.metrics, self.max_client_batch = reranker, limits, metrics, max_client_batch
        reranker.model.eval()
        self.batcher = Batcher(self._run, limits, metrics, "rerank")
        self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qzhou-rerank-tokenize")

    @classmethod
    def load(cls, source: str, limits: Limits, metrics: Any = None, max_client_batch: int = 256,
             reranker: Any = None, dtype: str = "auto", device: str | None = None) -> RerankService:
        if reranker is None:
            from qzhou import Reranker

            reranker = Reranker.load(source, dtype=dtype, device=device)
        return cls(reranker, limits, metrics, max_client_batch)

    def describe(self) -> dict[str, Any]:
        return self.reranker.info()

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
        if len(texts) > self.max_client_batch:
            raise errors.invalid(f"field '{field}': {len(texts)} documents, over the limit of {self.max_client_batch}"
                                 " per request (server flag --max-client-batch)", "too_many_inputs")
        t0 = time.perf_counter()
        ids = await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, self.tokenize, query, texts,
                                                               instruction, truncate, field)
        if self.metrics is not None:
            self.metrics.tokenize_seconds.labels("rerank").observe(time.perf_counter() - t0)
        rows = await self.batcher.submit([(x, len(x)) for x in ids])
        z = torch.stack(rows)  # (n, 2): z_no, z_yes
        log_odds = z[:, 1] - z[:, 0]
        return torch.sigmoid(log_odds).numpy(), log_odds.numpy(), sum(map(len, ids))

    @torch.inference_mode()
    def _run(self, batch: list[list[int]]) -> list[torch.Tensor]:
        input_ids, mask = self.reranker.pad(batch)
        return list(self.reranker(input_ids, mask).float().cpu())

    async def start(self) -> None:
        self.batcher.start()

    async def warm_up(self) -> None:
        await self.score("warm up", ["warm up"])

    async def close(self) -> None:
        await self.batcher.close()
        self._tokenize_pool.shutdown(wait=True)
