"""`qzhou check-parity MODEL`: the vectors a qzhou server returns equal `Embedder.encode`'s for the same inputs
and options, and those equal what sentence-transformers computes from the saved folder, so a model scores the
same served as evaluated; likewise the reranker's p(yes) and log-odds equal `Reranker.score`'s (and a saved
folder's CrossEncoder scores). Without `--url` the check starts its own server in-process on a free port."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qzhou.serving.launch import free_port

SAMPLE = ["What is the capital of France?", "Paris is the capital and largest city of France.",
          "The quick brown fox jumps over the lazy dog.", "a", "Embeddings map text to vectors; similar texts land "
          "close together, which is what retrieval, clustering and deduplication rely on.", "猫が好きです。",
          "How do I reset my password?", "Rivers carry water from the mountains to the sea."]


@dataclass
class ParityReport:
    #: (case, server vs Embedder.encode / Reranker.score, those vs sentence-transformers or None)
    rows: list[tuple[str, float, float | None]] = field(default_factory=list)
    tolerance: float = 1e-4

    @property
    def ok(self) -> bool:
        return all(a <= self.tolerance and (b is None or b <= self.tolerance) for _, a, b in self.rows)

    def table(self) -> str:
        lines = [f"{'case':<34} {'server vs qzhou':>17} {'qzhou vs ST':>13}"]
        for case, a, b in self.rows:
            lines.append(f"{case:<34} {a:>17.2e} {('-' if b is None else f'{b:.2e}'):>13}")
        lines.append(f"max abs difference, tolerance {self.tolerance:g}: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def _post(url: str, body: dict, key: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _vectors(resp: dict) -> np.ndarray:
    rows = sorted(resp["data"], key=lambda d: d["index"])
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") if isinstance(d["embedding"], str)
                     else np.asarray(d["embedding"], np.float32) for d in rows])


class InProcessServer:
    """A qzhou server for `embedder` and / or `reranker` on 127.0.0.1 in a background thread (the check's
    default)."""

    def __init__(self, embedder: Any = None, reranker: Any = None):
        import uvicorn

        from qzhou.serving.app import ServerState, create_app
        from qzhou.serving.batcher import Limits
        from qzhou.serving.engine import EmbedService
        from qzhou.serving.rerank import RerankService

        state = ServerState(embed=None if embedder is None else EmbedService(embedder, Limits()),
                            rerank=None if reranker is None else RerankService(reranker, Limits()),
                            model_name="parity", reranker_name="parity-reranker")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process parity server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def _cases(embedder: Any) -> list[tuple[str, dict, dict, dict | None]]:
    """(name, request options, encode kwargs, sentence-transformers kwargs or None when ST has no equivalent)."""
    c = embedder.config
    dim = min(32, embedder.hidden_size)
    task = "Given a question, retrieve passages that answer it"
    prefix_only = not c.query_suffix()
    return [
        ("document, float", {"encoding_format": "float"}, {}, {}),
        ("document, base64", {"encoding_format": "base64"}, {}, {}),
        ("prompt_name=query", {"prompt_name": "query"}, {"prompt_name": "query"},
         {"prompt_name": "query"} if prefix_only else None),
        ("instruction", {"instruction": task}, {"instruction": task},
         {"prompt": c.query_prefix(task)} if prefix_only else None),
        (f"dimensions={dim}, base64", {"dimensions": dim, "encoding_format": "base64"}, {"dim": dim}, None),
    ]


PAIRS_QUERY = "What is the capital of France?"


def _embed_rows(embedder: Any, st: Any, texts: list[str], base: str, key: str | None) -> list:
    rows = []
    for name, options, enc_kwargs, st_kwargs in _cases(embedder):
        served = _vectors(_post(f"{base}/v1/embeddings", {"input": texts, **options}, key))
        ours = embedder.encode(texts, **enc_kwargs)
        theirs = None
        if st is not None and st_kwargs is not None:
            theirs = float(np.abs(ours - st.encode(texts, convert_to_numpy=True, **st_kwargs)).max())
        rows.append((name, float(np.abs(served - ours).max()), theirs))
    return rows


def _rerank_rows(reranker: Any, ce: Any, texts: list[str], base: str, key: str | None) -> list:
    """Served p(yes) and log-odds vs `Reranker.score`, and vs sentence-transformers' CrossEncoder when the folder
    is in its layout (`Reranker.save`)."""
    rows = []
    pairs = [(PAIRS_QUERY, t) for t in texts]
    for name, instruction in (("rerank", None), ("rerank, instruction", "Find the answer to the question")):
        body = {"query": PAIRS_QUERY, "documents": texts, "instruction": instruction, "return_documents": False}
        got = sorted(_post(f"{base}/v1/rerank", body, key)["results"], key=lambda r: r["index"])
        p, z = reranker.score(pairs, instruction=instruction, return_logits=True)
        served_p = np.array([r["relevance_score"] for r in got])
        served_z = np.array([r["log_odds"] for r in got])
        theirs = None
        if ce is not None:
            theirs = float(np.abs(p - ce.predict(pairs, **({"prompt": instruction} if instruction else {}))).max())
        rows.append((f"{name}: p(yes)", float(np.abs(served_p - p).max()), theirs))
        rows.append((f"{name}: log-odds", float(np.abs(served_z - z).max()), None))
    return rows


def check_parity(model: str | Path | None = None, reranker: str | Path | None = None, texts_file: str | None = None,
                 url: str | None = None, api_key_env: str | None = None, tolerance: float = 1e-4,
                 dtype: str = "float32", device: str | None = None) -> ParityReport:
    """Compare a server's answers with the library's and sentence-transformers' for `model` (an embedder folder)
    and / or `reranker` (a reranker folder)."""
    from qzhou import Embedder

    if model is None and reranker is None:
        raise ValueError("give MODEL (an embedder folder), --reranker R, or both")
    texts = SAMPLE
    if texts_file:
        from qzhou.textio import read_texts

        texts = read_texts(texts_file, None)
    e = st = r = ce = None
    if model is not None:
        from sentence_transformers import SentenceTransformer

        e = Embedder.load(model, dtype=dtype, device=device)
        st = SentenceTransformer(str(model), device=str(e.device)) if (Path(model) / "modules.json").exists() else None
    if reranker is not None:
        from qzhou import Reranker

        r = Reranker.load(reranker, dtype=dtype, device=device)
        if (Path(reranker) / "1_LogitScore").is_dir():
            from sentence_transformers.cross_encoder import CrossEncoder

            ce = CrossEncoder(str(reranker), device=str(r.device))
    key = os.environ.get(api_key_env) if api_key_env else None
    report = ParityReport(tolerance=tolerance)

    def run(base: str) -> None:
        if e is not None:
            report.rows += _embed_rows(e, st, texts, base, key)
        if r is not None:
            report.rows += _rerank_rows(r, ce, texts, base, key)

    if url:
        run(url.rstrip("/"))
    else:
        with InProcessServer(e, r) as server:
            run(server.url)
    return report
