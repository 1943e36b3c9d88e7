"""`POST /rerank` (TEI: `query`, `texts`, `raw_scores`, `return_text`, `truncate`) and `POST /v1/rerank` (Jina /
Cohere: `query`, `documents` as strings or `{text}`, `top_n`, `return_documents`, `instruction`). Both sort best
first by the log-odds, which still separate documents whose p(yes) rounds to 1.0 (as `Reranker.rank` does)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from qzhou.serving import schemas
from qzhou.serving.app import check_model, need, read_body


def _order(log_odds: np.ndarray) -> list[int]:
    return sorted(range(len(log_odds)), key=lambda i: (-float(log_odds[i]), i))


def add_rerank_routes(app: FastAPI, state: Any) -> None:
    @app.post("/rerank")
    async def tei_rerank(request: Request):
        req = await read_body(request, schemas.TeiRerankRequest)
        service = need(state.rerank, "reranker")
        p, z, _ = await service.score(req.query, req.texts, req.instruction, req.truncate, "texts")
        scores = z if req.raw_scores else p
        out = []
        for i in _order(z):
            item = {"index": i, "score": float(scores[i])}
            if req.return_text:
                item["text"] = req.texts[i]
            out.append(item)
        return JSONResponse(out)

    @app.post("/v1/rerank")
    async def v1_rerank(request: Request):
        req = await read_body(request, schemas.RerankRequest)
        service = need(state.rerank, "reranker")
        check_model(state, req.model, state.reranker_name)
        texts = req.texts()
        p, z, tokens = await service.score(req.query, texts, req.instruction, req.truncate, "documents")
        results = []
        for i in _order(z)[:req.top_n]:
            item = {"index": i, "relevance_score": float(p[i]), "log_odds": float(z[i])}
            if req.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return JSONResponse({"object": "list", "model": state.reranker_name, "results": results,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
