"""The FastAPI app: OpenAI `POST /v1/embeddings`, TEI `POST /embed` and `POST /rerank`, Jina / Cohere
`POST /v1/rerank`, and `GET /health`, `/info`, `/metrics`, `/v1/models`.

Routes read the raw body themselves (size limit, then `schemas.parse`) so that every error, validation included,
has the one OpenAI-style JSON shape. Auth, the payload limit and request metrics live in one middleware.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from qzhou.serving import errors, schemas
from qzhou.serving.engine import EmbedOptions, EmbedService
from qzhou.serving.metrics import Metrics

log = logging.getLogger("qzhou.serving")
ROUTES = ("/v1/embeddings", "/embed", "/rerank", "/v1/rerank", "/health", "/info", "/metrics", "/v1/models")


@dataclass
class ServerState:
    """What the routes share: the services, the limits that are not the batcher's, and readiness."""

    embed: EmbedService | None
    rerank: Any = None  # qzhou.serving.rerank.RerankService
    model_name: str = "qzhou"
    reranker_name: str | None = None
    api_key: str | None = None
    payload_limit: int = 2_000_000
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await _start(state)
        yield
        state.ready = False
        for service in (state.embed, state.rerank):
            if service is not None:
                await service.close()  # runs every accepted input first
        log.info("qzhou serve: stopped after finishing in-flight batches")

    app = FastAPI(title="qzhou serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.qzhou = state
    app.middleware("http")(_guard)
    app.add_exception_handler(errors.ApiError, _api_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _add_embedding_routes(app, state)
    _add_info_routes(app, state)
    from qzhou.serving.rerank_routes import add_rerank_routes

    add_rerank_routes(app, state)
    return app


async def _start(state: ServerState) -> None:
    """Start the batchers and run one warm-up batch through each; /health says ready only after."""
    if state.embed is not None:
        await state.embed.start()
        await state.embed.embed(["warm up"], EmbedOptions())
    if state.rerank is not None:
        await state.rerank.start()
        await state.rerank.warm_up()
    state.ready = True
    log.info("qzhou serve: ready")


async def _api_error(request: Request, e: errors.ApiError) -> JSONResponse:
    return e.response()


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in the same JSON shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return errors.error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}; routes: "
                                 + ", ".join(ROUTES), code, headers=getattr(e, "headers", None))


async def _unexpected(request: Request, e: Exception) -> JSONResponse:
    log.exception("qzhou serve: unexpected error on %s", request.url.path)
    return errors.error_response(500, f"internal error: {type(e).__name__}: {e}", "internal_error", "server_error")


async def _guard(request: Request, call_next):
    """API key, declared body size, and one metrics sample per request."""
    state: ServerState = request.app.state.qzhou
    t0 = time.perf_counter()
    path = request.url.path
    try:
        if state.api_key and path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                raise errors.unauthorized()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > state.payload_limit:
            raise errors.too_large(int(declared), state.payload_limit)
        response = await call_next(request)
    except errors.ApiError as e:
        response = e.response()
    state.metrics.observe(path if path in ROUTES else "other", response.status_code, time.perf_counter() - t0)
    return response


async def read_body(request: Request, model: type) -> Any:
    """The body, held to the payload limit (also when no Content-Length was sent), parsed into `model`."""
    state: ServerState = request.app.state.qzhou
    body = await request.body()
    if len(body) > state.payload_limit:
        raise errors.too_large(len(body), state.payload_limit)
    return schemas.parse(model, body)


def need(service: Any, what: str) -> Any:
    if service is None:
        raise errors.ApiError(404, f"this server has no {what}; start it with one (qzhou serve --help)",
                              "not_served")
    return service


def check_model(state: ServerState, asked: str | None, served: str | None) -> None:
    if asked is not None and asked != served:
        raise errors.ApiError(404, f"model {asked!r} is not served here; this server serves {served!r}",
                              "model_not_found")


def _options(req: Any, normalize: bool | None = None) -> EmbedOptions:
    return EmbedOptions(instruction=req.instruction, prompt_name=req.prompt_name, task=req.task,
                        dimensions=req.dimensions, normalize=normalize, truncate=req.truncate)


def _b64(v: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: what the OpenAI client decodes by default."""
    return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")


def _add_embedding_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request):
        req = await read_body(request, schemas.EmbeddingsRequest)
        service = need(state.embed, "embedding model")
        check_model(state, req.model, state.model_name)
        vectors, tokens = await service.embed(req.input, _options(req), "input")
        encode = _b64 if req.encoding_format == "base64" else (lambda v: v.tolist())
        data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": state.model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/embed")
    async def tei_embed(request: Request):
        req = await read_body(request, schemas.EmbedRequest)
        service = need(state.embed, "embedding model")
        vectors, _ = await service.embed(req.inputs, _options(req, normalize=req.normalize), "inputs")
        return JSONResponse(vectors.tolist())


def _add_info_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health():
        if not state.ready:
            raise errors.unavailable("not ready: the model is loading or warming up, or the server is stopping")
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/info")
    async def info():
        return describe(state)

    @app.get("/v1/models")
    async def models():
        names = [n for n in (state.embed and state.model_name, state.rerank and state.reranker_name) if n]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "qzhou"} for n in names]}


def describe(state: ServerState) -> dict[str, Any]:
    """`GET /info`: qzhou's description plus the keys TEI clients read (model_id, max_input_length, ...)."""
    from qzhou import __version__

    out: dict[str, Any] = {"version": __version__, "model_id": state.model_name, "ready": state.ready,
                           "payload_limit": state.payload_limit}
    if state.embed is not None:
        e, limits = state.embed.embedder, state.embed.limits
        out["model_type"] = "embedding"
        out["max_input_length"] = e.config.max_length
        out["embedder"] = {**e.info(), "matryoshka_dimensions": state.embed.dimensions,
                           "supported_dimensions": state.embed.supported_dimensions(), "rules": state.embed.rules}
        out["batching"] = {"max_batch_tokens": limits.max_batch_tokens,
                           "max_batch_requests": limits.max_batch_requests, "max_wait_ms": limits.max_wait_ms,
                           "max_queue": limits.max_queue, "request_timeout": limits.request_timeout,
                           "max_client_batch": state.embed.max_client_batch}
        out.update(max_batch_tokens=limits.max_batch_tokens, max_client_batch_size=state.embed.max_client_batch)
    if state.rerank is not None:
        out["reranker"] = {"model_id": state.reranker_name, **state.rerank.reranker.info()}
    return out
