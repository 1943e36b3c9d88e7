"""`qzhou serve` as a real server on 127.0.0.1 in a subprocess (one per module, shared), with a tiny random
Qwen3-style embedder: the official OpenAI client (base64 by default, float, dimensions, qzhou's extensions), TEI
routes over httpx, every error code each followed by a request that still succeeds, 200 concurrent requests of
mixed lengths that get exactly their own vectors, and SIGTERM under load losing no accepted request.

Run as a script, this file is that server: `run_server` (what `qzhou serve` calls) with two faults injected
into the model call: a batch holding the token "math" raises, one holding "science" sleeps $QZHOU_TEST_SLEEP s.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

KEY = "test-secret"
TEXTS = ["the cat", "a big brown dog runs over the lazy fox in the city", "paris is the capital of france",
         "blue", "the red bird eats fish and the fox sleeps under a tree"]
WORDS = [w for w in "the a of to in and is for on with cat dog fox bird fish runs jumps sleeps eats quick brown lazy "
         "red blue green big small over under query passage city river water tree house car road music art".split()]
LIMITS = ["--threads", "1", "--payload-limit", "60000", "--max-queue", "256", "--max-client-batch", "64", "--max-wait-ms", "2",
          "--max-batch-tokens", "2048"]


def _start(folder: Path, *flags: str, sleep: float) -> tuple[subprocess.Popen, str]:
    from qzhou.serving.launch import free_port, start_server

    port = free_port()
    env = {**os.environ, "QZHOU_TEST_KEY": KEY, "QZHOU_TEST_SLEEP": str(sleep), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, str(folder), "--port", str(port), "--dtype", "float32", "--log-level",
           "warning", "--api-key-env", "QZHOU_TEST_KEY", *flags]
    url = f"http://127.0.0.1:{port}"
    return start_server(cmd, url, env), url


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def folder(base_dirs, tmp_path_factory) -> Path:
    from qzhou import Embedder

    e = Embedder.load(base_dirs["qwen3"], dtype="float32", attention="causal", pooling="last", max_length=48)
    return e.save(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def embedder(folder):
    from qzhou import Embedder

    return Embedder.load(folder, dtype="float32")


@pytest.fixture(scope="module")
def server(folder):
    proc, url = _start(folder, *LIMITS, "--request-timeout", "4", sleep=5.0)
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def http(server):
    import httpx2

    with httpx2.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def _good(http, embedder) -> None:
    """The request every error test ends with: the server still answers, with encode's vectors."""
    r = http.post("/v1/embeddings", json={"input": TEXTS[:2]})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
    np.testing.assert_allclose(got, embedder.encode(TEXTS[:2]), atol=1e-5)


# ---------------------------------------------------------------------------------------------- clients
def test_openai_client_base64_by_default_float_and_dimensions(server, embedder):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key=KEY)
    r = client.embeddings.create(model="tiny", input=TEXTS)  # the SDK asks for base64 and decodes it
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), embedder.encode(TEXTS), atol=1e-5)
    assert r.usage.prompt_tokens == sum(len(x) for x in embedder.tokenize(TEXTS))
    r = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float", dimensions=16)
    got = np.array([d.embedding for d in r.data])
    assert got.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(got, embedder.encode(TEXTS, dim=16), atol=1e-5)
    r = client.embeddings.create(model="tiny", input=TEXTS[0], dimensions=8)  # one string, base64
    np.testing.assert_allclose(r.data[0].embedding, embedder.encode(TEXTS[0], dim=8), atol=1e-5)


def test_instruction_prompt_name_and_task(server, embedder):
    from openai import OpenAI

    from qzhou.instructions import instruction_for

    client = OpenAI(base_url=server + "/v1", api_key=KEY)

    def served(**extra):
        r = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float", extra_body=extra)
        return np.array([d.embedding for d in r.data])

    np.testing.assert_allclose(served(instruction="Find cats"), embedder.encode(TEXTS, instruction="Find cats"),
                               atol=1e-5)
    np.testing.assert_allclose(served(prompt_name="query"), embedder.encode(TEXTS, prompt_name="query"), atol=1e-5)
    task = "ArguAna"
    np.testing.assert_allclose(served(task=task), embedder.encode(TEXTS, instruction=instruction_for(task, "query")),
                               atol=1e-5)
    doc = instruction_for("FiQA2018", "document")  # retrieval documents stay raw under qzhou's rules
    assert doc is None
    np.testing.assert_allclose(served(task="FiQA2018", prompt_name="document"), embedder.encode(TEXTS), atol=1e-5)


def test_tei_embed_normalize_and_token_ids(http, embedder):
    r = http.post("/embed", json={"inputs": TEXTS[1]})
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json()), embedder.encode([TEXTS[1]]), atol=1e-5)
    raw = np.array(http.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(norms, 1.0)  # unnormalised pooled vectors, same directions
    np.testing.assert_allclose(raw / norms, embedder.encode(TEXTS), atol=1e-5)
    q = np.array(http.post("/embed", json={"inputs": TEXTS, "prompt_name": "query", "dimensions": 32}).json())
    np.testing.assert_allclose(q, embedder.encode(TEXTS, prompt_name="query", dim=32), atol=1e-5)
    ids = embedder.tokenize(TEXTS)
    r = http.post("/v1/embeddings", json={"input": ids})
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, embedder.encode(TEXTS), atol=1e-5)
    assert r.json()["usage"]["prompt_tokens"] == sum(map(len, ids))


def test_info_health_metrics_models(server, http, embedder):
    import httpx2

    assert httpx2.get(server + "/health").status_code == 200  # no key needed for health
    info = http.get("/info").json()
    assert info["embedder"]["dimension"] == 64 and info["max_input_length"] == 48
    assert info["batching"]["max_batch_tokens"] == 2048 and info["batching"]["max_client_batch"] == 64
    assert info["embedder"]["prompts"]["query"] == embedder.config.query_prefix()
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny"]
    text = http.get("/metrics").text
    for name in ("qzhou_requests_total", "qzhou_request_failures_total", "qzhou_queue_size", "qzhou_batch_tokens",
                 "qzhou_queue_seconds", "qzhou_tokenize_seconds", "qzhou_inference_seconds"):
        assert name in text


# ---------------------------------------------------------------------------------------------- errors
LONG = " ".join(["dog"] * 60)  # 60 tokens + the appended one, over max_length 48
CASES = [
    ("no key", {"headers": {"Authorization": ""}}, 401, "invalid_api_key"),
    ("wrong key", {"headers": {"Authorization": "Bearer nope"}}, 401, "invalid_api_key"),
    ("payload", {"json": {"input": ["the cat " * 10000]}}, 413, "payload_too_large"),
    ("too many inputs", {"json": {"input": ["the cat"] * 65}}, 422, "too_many_inputs"),
    ("empty string", {"json": {"input": ["the cat", " "]}}, 422, "invalid_input"),
    ("wrong type", {"json": {"input": [1.5]}}, 422, "invalid_field"),
    ("not json", {"content": b"{input:"}, 422, "invalid_json"),
    ("unknown field", {"json": {"input": "x", "dims": 3}}, 422, "invalid_field"),
    ("too long", {"json": {"input": [LONG]}}, 422, "invalid_input"),
    ("too long ids", {"json": {"input": [[7] * 49]}}, 422, "invalid_input"),
    ("bad token id", {"json": {"input": [[7, 10**6]]}}, 422, "invalid_input"),
    ("dimensions", {"json": {"input": "x", "dimensions": 65}}, 400, "unsupported_dimensions"),
    ("model", {"json": {"input": "x", "model": "other"}}, 404, "model_not_found"),
    ("conflict", {"json": {"input": "x", "instruction": "a", "prompt_name": "query"}}, 422, "conflicting_options"),
    ("task", {"json": {"input": "x", "task": "NoSuchTask"}}, 422, "unknown_task"),
]


@pytest.mark.parametrize("name,kwargs,status,code", CASES, ids=[c[0] for c in CASES])
def test_error_then_good_request(http, embedder, name, kwargs, status, code):
    r = http.post("/v1/embeddings", **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    _good(http, embedder)


def test_truncate_allows_long_inputs_like_encode(http, embedder):
    r = http.post("/embed", json={"inputs": [LONG], "truncate": True})
    np.testing.assert_allclose(np.array(r.json()), embedder.encode([LONG]), atol=1e-5)  # encode truncates


def test_failing_batch_fails_only_its_own_request(server, embedder):
    import httpx2

    texts = [random.Random(i).choice(TEXTS) + " " + " ".join(WORDS[: 1 + i]) for i in range(20)]

    async def main():
        async with httpx2.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            bad = c.post("/v1/embeddings", json={"input": ["the cat", "math is fun"]})
            goods = [c.post("/v1/embeddings", json={"input": [t]}) for t in texts]
            return await asyncio.gather(bad, *goods)

    bad, *goods = asyncio.run(main())
    assert bad.status_code == 500 and bad.json()["error"]["code"] == "inference_failed"
    assert "injected fault" in bad.json()["error"]["message"]
    for t, r in zip(texts, goods):
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], embedder.encode(t), atol=1e-5)


def test_timeout_and_queue_full_then_good(server, http, embedder):
    """A batch that sleeps 5 s holds the model thread: its request times out (504, --request-timeout 4), and
    requests that overflow --max-queue 256 meanwhile get a 429 with Retry-After."""
    import httpx2

    async def main():
        async with httpx2.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            slow = asyncio.ensure_future(c.post("/v1/embeddings", json={"input": "science"}))
            await asyncio.sleep(0.5)
            fillers = await asyncio.gather(*(c.post("/v1/embeddings", json={"input": ["the cat"] * 64})
                                             for _ in range(5)))
            return await slow, fillers

    slow, fillers = asyncio.run(main())
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"
    full = [r for r in fillers if r.status_code == 429]
    assert full and all(int(r.headers["Retry-After"]) >= 1 for r in full)
    assert full[0].json()["error"]["code"] == "queue_full"
    assert all(r.status_code in (200, 429, 504) for r in fillers)
    _good(http, embedder)


def test_200_concurrent_requests_get_their_own_vectors(server, http, embedder):
    import httpx2

    rng = random.Random(13)
    reqs = []
    for i in range(200):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
        reqs.append((text, {"input": text, **({"prompt_name": "query"} if i % 3 == 0 else {}),
                            **({"dimensions": 24} if i % 5 == 0 else {})}))
    before = _batches(http)

    async def main():
        limits = httpx2.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx2.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                                      limits=limits) as c:
            return await asyncio.gather(*(c.post("/v1/embeddings", json=body) for _, body in reqs))

    outs = asyncio.run(main())
    for (text, body), r in zip(reqs, outs):
        assert r.status_code == 200, r.text
        want = embedder.encode(text, prompt_name=body.get("prompt_name"), dim=body.get("dimensions"))
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=1e-5)
    assert _batches(http) - before < 200  # requests were merged into shared forwards


def _batches(http) -> float:
    line = next(x for x in http.get("/metrics").text.splitlines() if x.startswith('qzhou_batch_tokens_count{'))
    return float(line.split()[-1])


# ---------------------------------------------------------------------------------------------- lifecycle
def test_sigterm_finishes_every_accepted_request(folder, embedder):
    """Requests queued behind a 2 s batch when SIGTERM arrives all complete with their vectors; the server then
    refuses new connections and exits."""
    import httpx2

    proc, url = _start(folder, *LIMITS, "--request-timeout", "30", sleep=2.0)
    texts = [" ".join(WORDS[i % 7: i % 7 + 1 + i % 13]) for i in range(40)]
    headers = {"Authorization": f"Bearer {KEY}"}

    async def main():
        async with httpx2.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            slow = asyncio.ensure_future(c.post("/v1/embeddings", json={"input": "science"}))
            await asyncio.sleep(0.3)
            reqs = [asyncio.ensure_future(c.post("/v1/embeddings", json={"input": t})) for t in texts]
            while await _queued(c) < 1 + len(texts):  # every request accepted and waiting
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            try:
                late = (await c.post("/v1/embeddings", json={"input": "the cat"}, headers={"Connection": "close"}
                                     )).status_code
            except httpx2.TransportError:
                late = "refused"
            return await slow, await asyncio.gather(*reqs), late

    try:
        slow, outs, late = asyncio.run(main())
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        _stop(proc)
    assert slow.status_code == 200
    for t, r in zip(texts, outs):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], embedder.encode(t), atol=1e-5)
    assert late in ("refused", 503)


async def _queued(client) -> float:
    text = (await client.get("/metrics")).text
    return float(next(x for x in text.splitlines() if x.startswith('qzhou_queue_size{model="embed"}')).split()[-1])


# ---------------------------------------------------------------------------------------------- commands
def test_check_parity_command(folder, capsys):
    from qzhou.cli import main

    assert main(["check-parity", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "dimensions=32" in out and "prompt_name=query" in out


def test_serve_flag_errors_name_the_flag(capsys):
    from qzhou.cli import main

    assert main(["serve", "x", "--max-queue", "8", "--max-client-batch", "16"]) == 2
    assert "--max-client-batch" in capsys.readouterr().err
    assert main(["serve", "x", "--api-key-env", "QZHOU_SURELY_UNSET_VAR"]) == 2
    assert "QZHOU_SURELY_UNSET_VAR" in capsys.readouterr().err


def test_dimensions_flag_within_the_hidden_size(folder, embedder):
    import argparse

    from qzhou.serving.cli import add_serve_args, build_state

    p = argparse.ArgumentParser()
    add_serve_args(p)
    with pytest.raises(ValueError, match=f"--dimensions 16,99999: .* hidden size {embedder.hidden_size}"):
        build_state(p.parse_args([str(folder), "--dimensions", "16,99999"]), embedder=embedder)
    state = build_state(p.parse_args([str(folder), "--dimensions", "32,16"]), embedder=embedder)
    assert state.embed.dimensions == [16, 32]


def _fault_server(argv: list[str]) -> None:
    """`qzhou serve` with the two faults injected into the model call (see the module docstring)."""
    import argparse

    from qzhou import Embedder
    from qzhou.serving.cli import add_serve_args, run_server

    p = argparse.ArgumentParser()
    add_serve_args(p)
    a = p.parse_args(argv)
    e = Embedder.load(a.model, dtype=a.dtype)
    fail, slow = e.tokenizer.convert_tokens_to_ids("math"), e.tokenizer.convert_tokens_to_ids("science")
    pooled = e.pooled_ids

    def faulty(ids):
        if any(fail in x for x in ids):
            raise RuntimeError("injected fault")
        if any(slow in x for x in ids):
            time.sleep(float(os.environ["QZHOU_TEST_SLEEP"]))
        return pooled(ids)

    e.pooled_ids = faulty
    run_server(a, embedder=e)


if __name__ == "__main__":
    _fault_server(sys.argv[1:])
