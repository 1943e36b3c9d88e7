"""`qzhou serve MODEL [--reranker R]` and `qzhou check-parity MODEL`: parse, build, run; logic lives in app.py,
engine.py, batcher.py and parity.py.

    qzhou serve out/my-embedder --port 8080 --api-key-env QZHOU_KEY
    curl -s localhost:8080/v1/embeddings -H 'Content-Type: application/json' -d '{"input": ["hello"]}'
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EXTRA = "the serving extra: pip install 'qzhou[serve]'"


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"qzhou serve needs {EXTRA} ({e.name} is missing)") from None


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="embedder folder, hub id or .gguf (omit to serve only "
                   "--reranker)")
    p.add_argument("--reranker", default=None, help="a Qwen3-style reranker to serve on /rerank and /v1/rerank")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="(--reranker) run every prompt in full instead of computing a batch's shared prompt prefix "
                        "(system turn, instruction, query) once; the scores are the same either way")
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; 0.0.0.0 listens on every interface")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="require 'Authorization: Bearer $VAR'")
    p.add_argument("--served-model-name", default=None, help="the 'model' clients send (default: the folder name)")
    p.add_argument("--rules", choices=["qzhou", "qwen3"], default="qzhou",
                   help="which side of a 'task' gets its instruction (qzhou.instructions)")
    p.add_argument("--dimensions", default=None, metavar="N,N,...",
                   help="Matryoshka sizes to allow (default: the model's matryoshka_dimensions, else 1..hidden)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per batch (rows x longest)")
    p.add_argument("--max-batch-requests", type=int, default=128, help="inputs per batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more inputs")
    p.add_argument("--max-queue", type=int, default=4096, help="inputs waiting or running; more get a 429")
    p.add_argument("--max-client-batch", type=int, default=256, help="inputs per request; more get a 422")
    p.add_argument("--payload-limit", type=int, default=2_000_000, help="request body bytes; more get a 413")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds; longer requests get a 504")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the model (default: torch's choice; 1 can be faster on a busy machine)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def check_args(a: argparse.Namespace) -> None:
    if a.model is None and a.reranker is None:
        raise ValueError("give MODEL (an embedder), --reranker R, or both")
    for flag in ("max_batch_tokens", "max_batch_requests", "max_queue", "max_client_batch", "payload_limit"):
        if getattr(a, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1 (got {getattr(a, flag)})")
    if a.max_client_batch > a.max_queue:
        raise ValueError(f"--max-client-batch ({a.max_client_batch}) must not exceed --max-queue ({a.max_queue}): "
                         "such a request could never be queued")
    if a.request_timeout <= 0 or a.max_wait_ms < 0:
        raise ValueError("--request-timeout must be > 0 and --max-wait-ms >= 0")
    if a.api_key_env and not os.environ.get(a.api_key_env):
        raise ValueError(f"--api-key-env {a.api_key_env}: that environment variable is not set or empty")


def parse_dimensions(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--dimensions: expected comma-separated integers like 64,128,256 (got {text!r})") from None


def build_state(a: argparse.Namespace, embedder: Any = None, reranker: Any = None):
    """The server's state from parsed flags; pass `embedder` / `reranker` to serve objects already loaded."""
    from qzhou.serving.app import ServerState
    from qzhou.serving.batcher import Limits
    from qzhou.serving.engine import EmbedService

    check_args(a)
    limits = Limits(a.max_batch_tokens, a.max_batch_requests, a.max_wait_ms, a.max_queue, a.request_timeout)
    state = ServerState(embed=None, api_key=os.environ[a.api_key_env] if a.api_key_env else None,
                        payload_limit=a.payload_limit)
    if a.model is not None:
        if embedder is None:
            from qzhou import Embedder

            embedder = Embedder.load(a.model, dtype=a.dtype, device=a.device)
        dims = parse_dimensions(a.dimensions)
        if dims and not 1 <= dims[0] <= dims[-1] <= embedder.hidden_size:
            raise ValueError(f"--dimensions {a.dimensions}: every size must be between 1 and the model's hidden size "
                             f"{embedder.hidden_size}")
        state.embed = EmbedService(embedder, limits, state.metrics, a.rules, dims, a.max_client_batch)
        state.model_name = a.served_model_name or Path(str(a.model).rstrip("/")).name
    if a.reranker is not None:
        from qzhou.serving.rerank import RerankService

        if reranker is None:
            from qzhou import Reranker

            reranker = Reranker.load(a.reranker, dtype=a.dtype, device=a.device)
        state.rerank = RerankService(reranker, limits, state.metrics, a.max_client_batch, a.prefix_cache)
        state.reranker_name = Path(str(a.reranker).rstrip("/")).name
    return state


def run_server(a: argparse.Namespace, embedder: Any = None, reranker: Any = None) -> None:
    """Serve until SIGINT / SIGTERM; uvicorn then stops accepting, and the app finishes in-flight batches."""
    _require()
    import uvicorn

    from qzhou.serving.app import create_app

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    app = create_app(build_state(a, embedder, reranker))
    config = uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level, access_log=False,
                            timeout_graceful_shutdown=int(a.request_timeout) + 5)
    uvicorn.Server(config).run()


def cmd_serve(a: argparse.Namespace) -> None:
    run_server(a)


def cmd_check_parity(a: argparse.Namespace) -> None:
    _require()
    from qzhou.serving.parity import check_parity

    report = check_parity(a.model, a.reranker, texts_file=a.texts, url=a.url, api_key_env=a.api_key_env, tolerance=a.tolerance,
                          dtype=a.dtype, device=a.device)
    print(report.table())
    if not report.ok:
        print(f"qzhou check-parity: FAILED (largest difference over {a.tolerance:g})", file=sys.stderr)
        raise SystemExit(1)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="OpenAI- and TEI-compatible embedding (and rerank) server with dynamic batching")
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-parity", help="server vectors = Embedder.encode = sentence-transformers on a folder "
                       "(and reranker scores = Reranker.score)")
    p.add_argument("model", nargs="?", default=None, help="a saved embedder folder")
    p.add_argument("--reranker", default=None, help="a reranker folder: served scores = Reranker.score (= CrossEncoder)")
    p.add_argument("--texts", default=None, help="a .txt/.jsonl/... file of texts (default: a built-in sample)")
    p.add_argument("--url", default=None, help="a running qzhou server (default: start one in-process)")
    p.add_argument("--api-key-env", default=None, metavar="VAR", help="the key of the server at --url")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed absolute difference")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_check_parity)
