"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1 with scripted faults."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from qzhou.synthesis.client import ChatClient, InvalidOutput, RequestFailed, parse_json_object
from qzhou.synthesis.stub_server import StubServer

MESSAGES = [{"role": "system", "content": "answer in JSON"}, {"role": "user", "content": "say hi"}]


def fast_client(url: str, **kw) -> ChatClient:
    kw = {"backoff": 0.01, "backoff_max": 0.05, "timeout": 0.5, **kw}
    return ChatClient(url, "stub", **kw)


def run(client: ChatClient, messages=MESSAGES, validate=None):
    async def go():
        async with client:
            return await client.complete(messages, validate)

    return asyncio.run(go())


@pytest.mark.parametrize("fault", ["429", "500", "503", "timeout", "drop", "bad-body"])
def test_transport_faults_are_retried(fault):
    with StubServer(faults=[fault, fault], hang=1.0) as s:
        client = fast_client(s.url)
        reply = run(client)
    assert "echo" in reply.data and reply.attempts == 1
    assert [f for _, f in s.log] == [fault, fault, "ok"]
    assert sum(client.usage.retries.values()) == 2 and client.usage.sent == 3 and client.usage.ok == 1


def test_malformed_json_is_retried_with_feedback():
    seen = []

    def responder(messages):
        seen.append(messages)
        return json.dumps({"answer": len(messages)})

    with StubServer(responder=responder, faults=["malformed"]) as s:
        reply = run(fast_client(s.url))
    assert reply.attempts == 2 and reply.data == {"answer": 4}
    assert "rejected" in seen[0][-1]["content"]  # the retry told the model what was wrong


def test_validator_rejection_retries_then_fails():
    def validate(data):
        raise InvalidOutput("too long")

    with StubServer() as s:
        client = fast_client(s.url, max_attempts=3)
        with pytest.raises(RequestFailed, match="3 attempts; last: too long") as e:
            run(client, validate=validate)
    assert e.value.attempts == 3 and client.usage.failed == 1 and len(s.log) == 3


def test_retries_exhausted_is_a_recorded_failure_not_a_crash():
    with StubServer(faults=["500"] * 5) as s:
        client = fast_client(s.url, max_retries=2)
        with pytest.raises(RequestFailed, match="http 500 after 2 retries"):
            run(client)
    assert client.usage.sent == 3 and client.usage.retries["http 500"] == 2


def test_auth_and_url_errors_stop_the_run(monkeypatch):
    monkeypatch.delenv("QZHOU_TEST_KEY", raising=False)

    def responder(messages):
        raise AssertionError("unreachable")

    with StubServer(responder=responder) as s:
        with pytest.raises(ValueError, match="--base-url must be the API root"):
            run(fast_client(s.url.removesuffix("/v1") + "/wrong"))
    with StubServer(responder=responder) as s:
        s.httpd.RequestHandlerClass.do_POST = lambda self: self._send(401, b'{"error": "bad key"}')
        with pytest.raises(ValueError, match=r"\$QZHOU_TEST_KEY is not set"):
            run(fast_client(s.url, api_key_env="QZHOU_TEST_KEY"))
    closed = StubServer()
    url = closed.url
    closed.httpd.server_close()
    with pytest.raises(ValueError, match="is the server running"):
        run(fast_client(url, max_retries=1))


def test_key_is_sent_as_bearer(monkeypatch):
    monkeypatch.setenv("QZHOU_TEST_KEY", "sk-test")
    seen = {}
    with StubServer() as s:
        original = s.httpd.RequestHandlerClass.do_POST

        def do_post(self):
            seen["auth"] = self.headers.get("Authorization")
            original(self)

        s.httpd.RequestHandlerClass.do_POST = do_post
        run(fast_client(s.url, api_key_env="QZHOU_TEST_KEY"))
    assert seen["auth"] == "Bearer sk-test"


def test_concurrency_bound_rate_limit_and_accounting():
    async def many(client, n):
        async with client:
            return await asyncio.gather(*[client.complete([{"role": "user", "content": f"q{i}"}]) for i in range(n)])

    with StubServer(latency=0.05) as s:
        client = fast_client(s.url, concurrency=3, price_in=2.0, price_out=8.0)
        replies = asyncio.run(many(client, 12))
    assert len({r.data["echo"] for r in replies}) == 12
    assert s.max_in_flight == 3
    u = client.usage
    assert u.prompt_tokens == sum(r.prompt_tokens for r in replies) > 0
    assert u.cost == pytest.approx((u.prompt_tokens * 2 + u.completion_tokens * 8) / 1e6)

    with StubServer() as s:
        client = fast_client(s.url, concurrency=8, rate_limit=20)
        t = time.perf_counter()
        asyncio.run(many(client, 6))
        assert time.perf_counter() - t >= 5 / 20 * 0.9  # 6 starts spaced 50 ms apart


def test_parse_json_object_tolerates_wrapping():
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object('Sure! {"a": {"b": 2}} Hope it helps.') == {"a": {"b": 2}}
    for bad in ("[1, 2]", "no json here", '{"a": }'):
        with pytest.raises(InvalidOutput):
            parse_json_object(bad)
