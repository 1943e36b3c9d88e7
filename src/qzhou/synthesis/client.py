"""An async client for any OpenAI-compatible `/chat/completions` endpoint (vLLM, Ollama, llama.cpp server,
hosted APIs).

Built on `httpx2` (httpx's successor, same API) rather than the `openai` SDK: httpx2 is already installed with
qzhou (huggingface_hub depends on it), and the retry policy is the point of this module, so it is written once
here instead of being split between the SDK's own retries and ours. It also tolerates the small deviations of
local servers (missing `usage`, JSON wrapped in code fences) that a strict SDK model would reject.

What a caller gets from `complete()`: the reply parsed as a JSON object and accepted by the caller's
`validate` function, or a `RequestFailed` after the retry budget is spent. Transport faults (429, 5xx,
timeouts, dropped connections) are retried with exponential backoff and jitter (honouring `Retry-After`);
replies that are not JSON or that `validate` rejects are retried with the rejection reason fed back to the model.
Faults that retrying cannot fix (a refused key, a wrong URL or model name) raise `ValueError` at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class InvalidOutput(ValueError):
    """The model answered, but not with what was asked for (raised by `validate`; retried with feedback)."""


class RequestFailed(Exception):
    """One request failed for good (retries spent, or a 4xx that retrying cannot fix); the job records it."""

    def __init__(self, message: str, attempts: int, prompt_tokens: int = 0, completion_tokens: int = 0):
        super().__init__(message)
        self.attempts = attempts
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens  # spent on the failed tries


@dataclass
class Usage:
    """Token and cost accounting of one run (prices in currency units per million tokens)."""

    price_in: float = 0.0
    price_out: float = 0.0
    sent: int = 0
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter = field(default_factory=Counter)

    @property
    def cost(self) -> float:
        return (self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {"http_requests": self.sent, "ok": self.ok, "failed": self.failed, "retries": dict(self.retries),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost": round(self.cost, 6)}


@dataclass
class Reply:
    data: dict[str, Any]
    text: str
    attempts: int
    prompt_tokens: int
    completion_tokens: int


def parse_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a reply: small models wrap it in code fences or add a sentence around it."""
    fenced = FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        candidates.append(text[start:end + 1])
    for c in candidates:
        try:
            value = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise InvalidOutput(f"the reply is not a JSON object: {text[:120]!r}")


class RateLimiter:
    """At most `rate` request starts per second, evenly spaced (no bursts that would trip a server's 429)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next - now
            self.next = max(now, self.next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class ChatClient:
    """Use as `async with ChatClient(...) as c: reply = await c.complete(messages, validate)`."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 rate_limit: float | None = None, timeout: float = 120.0, max_retries: int = 6,
                 max_attempts: int = 4, backoff: float = 0.5, backoff_max: float = 30.0,
                 params: dict[str, Any] | None = None, price_in: float = 0.0, price_out: float = 0.0):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout, self.concurrency = timeout, concurrency
        self.max_retries, self.max_attempts = max_retries, max_attempts
        self.backoff, self.backoff_max = backoff, backoff_max
        self.params = dict(params or {})
        self.usage = Usage(price_in=price_in, price_out=price_out)
        self._limiter = RateLimiter(rate_limit)
        self._sem = asyncio.Semaphore(concurrency)
        self._pools: list = []

    async def __aenter__(self) -> ChatClient:
        import httpx2

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        # httpx's pool scans all its connections for every request (a third of the client's CPU at 64 in flight):
        # requests are spread over one pool per 16 connections, so each scan stays short
        self._pools = [httpx2.AsyncClient(headers=headers, timeout=self.timeout, limits=limits)
                       for _ in range(max(1, self.concurrency // 16))]
        self._turn = 0
        return self

    async def __aexit__(self, *exc) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def complete(self, messages: list[dict[str, str]], validate: Callable[[dict], dict] | None = None) -> Reply:
        """Up to `max_attempts` answers; each answer may take up to `max_retries` transport retries."""
        convo = list(messages)
        last = "no attempt"
        prompt_tokens = completion_tokens = 0
        for attempt in range(1, self.max_attempts + 1):
            try:
                body = await self._post(convo, attempt)
            except RequestFailed as e:
                e.prompt_tokens += prompt_tokens
                e.completion_tokens += completion_tokens
                raise
            usage = body.get("usage") or {}
            prompt_tokens += int(usage.get("prompt_tokens") or 0)
            completion_tokens += int(usage.get("completion_tokens") or 0)
            try:
                text = body["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                text = ""
            data = None
            try:
                data = parse_json_object(text)
                if validate is not None:
                    data = validate(data)  # the validator returns the cleaned answer (what the job stores)
            except InvalidOutput as e:
                last = str(e)
                choice = body["choices"][0] if isinstance(body["choices"], list) else None
                if data is None and isinstance(choice, dict) and choice.get("finish_reason") == "length":
                    last += " (the reply was cut at max_tokens: raise --max-tokens)"
                if attempt < self.max_attempts:
                    self.usage.retries["invalid output"] += 1
                # feed the rejection back: retrying the same prompt at temperature 0 would repeat the same answer
                convo = [*messages, {"role": "assistant", "content": text[:2000]},
                         {"role": "user", "content": f"That answer was rejected: {last}. "
                                                     "Answer again with only the JSON object."}]
                continue
            self.usage.ok += 1
            return Reply(data, text, attempt, prompt_tokens, completion_tokens)
        self.usage.failed += 1
        raise RequestFailed(f"no valid answer in {self.max_attempts} attempts; last: {last}", self.max_attempts,
                            prompt_tokens, completion_tokens)

    async def _post(self, messages: list[dict[str, str]], attempt: int) -> dict[str, Any]:
        import httpx2

        payload = {"model": self.model, "messages": messages, **self.params}
        for retry in range(self.max_retries + 1):
            await self._limiter.wait()
            wait = None
            async with self._sem:
                self.usage.sent += 1
                self._turn += 1
                try:
                    r = await self._pools[self._turn % len(self._pools)].post(self.url, json=payload)
                except httpx2.TimeoutException:
                    cause = "timeout"
                except httpx2.TransportError as e:
                    cause = f"connection ({type(e).__name__})"
                    if isinstance(e, httpx2.ConnectError) and retry == self.max_retries:
                        raise ValueError(f"cannot connect to {self.url} ({e}); is the server running? "
                                         "check --base-url") from None
                else:
                    if r.status_code == 200:
                        try:
                            body = r.json()
                        except ValueError:
                            body = None
                        if isinstance(body, dict) and body.get("choices"):
                            self._account(body)
                            return body
                        cause = "malformed response"
                    elif r.status_code in RETRY_STATUS or r.status_code >= 500:
                        cause = f"http {r.status_code}"
                        wait = _retry_after(r.headers.get("retry-after"))
                    else:
                        self._fatal_or_fail(r, attempt)
            if retry < self.max_retries:
                self.usage.retries[cause] += 1
                delay = min(self.backoff_max, self.backoff * 2 ** retry) * random.uniform(0.5, 1.0)
                await asyncio.sleep(min(self.backoff_max, wait) if wait is not None else delay)
        self.usage.failed += 1
        raise RequestFailed(f"{cause} after {self.max_retries} retries", attempt)

    def _account(self, body: dict[str, Any]) -> None:
        usage = body.get("usage") or {}
        self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)

    def _fatal_or_fail(self, r, attempt: int) -> None:
        """401/403/404 stop the whole run (every request would fail the same way); other 4xx fail one request."""
        detail = r.text[:300].strip()
        if r.status_code in (401, 403):
            where = f"${self.api_key_env}" if self.api_key_env else "--api-key-env"
            state = "is set" if self.key else "is not set"
            raise ValueError(f"{self.url} refused the request ({r.status_code}: {detail}); {where} {state}: "
                             "put the server's API key there")
        if r.status_code == 404:
            raise ValueError(f"{self.url} answered 404 ({detail}); --base-url must be the API root (usually ending "
                             f"in /v1) and --model ({self.model!r}) a model the server serves")
        self.usage.failed += 1
        raise RequestFailed(f"http {r.status_code}: {detail}", attempt)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
