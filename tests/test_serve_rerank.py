"""The rerank routes of `qzhou serve --reranker R`, started through the real CLI in a subprocess with a tiny random
Qwen3 causal LM saved by `Reranker.save`: TEI `POST /rerank` and Jina / Cohere `POST /v1/rerank` give
`Reranker.score`'s p(yes) and log-odds, sorted best first; errors each followed by a good request; concurrent
requests get their own scores; `qzhou check-parity --reranker` passes (server = score = CrossEncoder)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from reranker_support import write_causal

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital and largest city of France.", "The quick brown fox jumps over the lazy dog.",
        "A cat sleeps in the house by the river.", "Music, art, science and math.", "yes no yes"]
LONG = "the quick brown fox jumps " * 60  # over max_length 256 with the template


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from qzhou import Reranker

    root = tmp_path_factory.mktemp("serve_rerank")
    r = Reranker.load(write_causal(root / "raw"), dtype="float32", max_length=256)
    return r.save(root / "reranker")


@pytest.fixture(scope="module")
def reranker(folder):
    from qzhou import Reranker

    return Reranker.load(folder, dtype="float32")


@pytest.fixture(scope="module")
def server(folder):
    from qzhou.serving.launch import free_port, start_server

    port = free_port()
    cmd = [sys.executable, "-m", "qzhou.cli", "serve", "--reranker", str(folder), "--port", str(port), "--dtype",
           "float32", "--threads", "1", "--max-client-batch", "8", "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, url, {**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.fixture(scope="module")
def http(server):
    import httpx2

    with httpx2.Client(base_url=server, timeout=60) as c:
        yield c


def _good(http, reranker) -> None:
    r = http.post("/rerank", json={"query": QUERY, "texts": DOCS[:2]})
    assert r.status_code == 200, r.text
    p = reranker.score([(QUERY, d) for d in DOCS[:2]])
    assert {x["index"]: x["score"] for x in r.json()} == pytest.approx(dict(enumerate(p.tolist())), abs=1e-5)


def test_tei_rerank_scores_sorted_raw_scores_and_text(http, reranker):
    p, z = reranker.score([(QUERY, d) for d in DOCS], return_logits=True)
    got = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert [x["index"] for x in got] == list(np.argsort(-z, kind="stable"))  # best first
    for x in got:
        assert x["score"] == pytest.approx(float(p[x["index"]]), abs=1e-5) and x["text"] == DOCS[x["index"]]
    raw = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert {x["index"]: x["score"] for x in raw} == pytest.approx(dict(enumerate(z.tolist())), abs=1e-4)
    assert "text" not in raw[0]


def test_v1_rerank_top_n_documents_and_instruction(http, reranker):
    task = "Find the answer to the question"
    docs = [DOCS[0], {"text": DOCS[1]}, DOCS[2], {"text": LONG}]  # the long one is truncated by default here
    texts = [d if isinstance(d, str) else d["text"] for d in docs]
    p, z = reranker.score([(QUERY, t) for t in texts], instruction=task, return_logits=True)
    body = http.post("/v1/rerank", json={"query": QUERY, "documents": docs, "top_n": 2, "instruction": task}).json()
    best = sorted(range(4), key=lambda i: -z[i])[:2]
    assert [x["index"] for x in body["results"]] == best
    for x in body["results"]:
        i = x["index"]
        assert x["relevance_score"] == pytest.approx(float(p[i]), abs=1e-5)
        assert x["log_odds"] == pytest.approx(float(z[i]), abs=1e-4)
        assert x["document"] == {"text": texts[i]}
    assert body["usage"]["total_tokens"] == sum(map(len, reranker.format_pairs([(QUERY, t) for t in texts], task)))
    plain = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False}).json()
    assert len(plain["results"]) == len(DOCS) and "document" not in plain["results"][0]


CASES = [
    ("/rerank", {"query": QUERY, "texts": []}, 422, "invalid_field"),
    ("/rerank", {"query": QUERY, "texts": [LONG]}, 422, "invalid_input"),  # TEI: truncate defaults to false
    ("/rerank", {"query": "", "texts": DOCS}, 422, "invalid_input"),
    ("/rerank", {"query": QUERY, "texts": DOCS * 2}, 422, "too_many_inputs"),
    ("/v1/rerank", {"query": QUERY, "documents": [{"txt": "a"}]}, 422, "invalid_field"),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}, 422, "invalid_field"),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS, "model": "nope"}, 404, "model_not_found"),
    ("/v1/embeddings", {"input": "x"}, 404, "not_served"),
    ("/nowhere", {}, 404, "not_found"),
]


@pytest.mark.parametrize("route,body,status,code", CASES, ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_rerank_errors_then_good(http, reranker, route, body, status, code):
    r = http.post(route, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    _good(http, reranker)


def test_truncate_matches_score(http, reranker):
    got = http.post("/rerank", json={"query": QUERY, "texts": [LONG, DOCS[0]], "truncate": True}).json()
    p = reranker.score([(QUERY, LONG), (QUERY, DOCS[0])])
    assert {x["index"]: x["score"] for x in got} == pytest.approx(dict(enumerate(p.tolist())), abs=1e-5)


def test_concurrent_requests_get_their_own_scores(server, reranker):
    import httpx2

    rng = np.random.default_rng(3)
    reqs = [[DOCS[j] for j in rng.choice(len(DOCS), size=rng.integers(1, 5), replace=False)] for _ in range(40)]

    async def main():
        async with httpx2.AsyncClient(base_url=server, timeout=120) as c:
            return await asyncio.gather(*(c.post("/rerank", json={"query": QUERY, "texts": t}) for t in reqs))

    for texts, r in zip(reqs, asyncio.run(main())):
        want = reranker.score([(QUERY, d) for d in texts])
        assert {x["index"]: x["score"] for x in r.json()} == pytest.approx(dict(enumerate(want.tolist())), abs=1e-5)


def test_info_and_check_parity_with_reranker(http, folder, capsys):
    from qzhou.cli import main

    info = http.get("/info").json()
    assert info["reranker"]["max_length"] == 256 and "embedder" not in info
    assert main(["check-parity", "--reranker", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "rerank: p(yes)" in out and "OK" in out


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_batched_requests_share_prefixes_and_score_as_the_plain_forward(reranker, prefix_cache):
    """In-process RerankService: requests for two queries and two instructions, batched together, each get the
    plain forward's scores (`prefix_cache=False` in `score`); with the cache on, the shared prefixes were reused."""
    from qzhou.serving.batcher import Limits
    from qzhou.serving.rerank import RerankService

    reqs = [(QUERY, DOCS, None), ("Who wrote Hamlet?", DOCS[1:4], None), (QUERY, DOCS[:3], "Find the answer"),
            (QUERY, [LONG, DOCS[0]], None)]
    service = RerankService(reranker, Limits(max_wait_ms=200.0), prefix_cache=prefix_cache)

    async def main():
        await service.start()
        try:
            return await asyncio.gather(*(service.score(q, docs, instruction) for q, docs, instruction in reqs))
        finally:
            await service.close()

    for (q, docs, instruction), (p, z, tokens) in zip(reqs, asyncio.run(main())):
        want_p, want_z = reranker.score([(q, d) for d in docs], instruction=instruction, return_logits=True,
                                        prefix_cache=False)
        assert p == pytest.approx(want_p, abs=1e-5) and z == pytest.approx(want_z, abs=1e-4)
        assert tokens == sum(map(len, reranker.format_pairs([(q, d) for d in docs], instruction)))
    assert (service.reused_tokens > 0) is prefix_cache
