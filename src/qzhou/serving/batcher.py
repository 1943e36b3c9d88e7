"""The asyncio dynamic batcher: one per model. Requests put their inputs (rows) in one queue; a loop merges rows
of many requests into token-budget batches, longest first like `Embedder.encode`, runs each batch in the model's
one worker thread (the event loop never blocks), and hands every row's result back to its request in order.

Why rows and not requests: one request may carry hundreds of inputs and many requests one each; the model's
cost is the padded batch (rows x longest row), so the budget is counted in rows and tokens, whoever sent them.

A batch that raises is split by request and re-run in halves down to the request that fails alone, so only
that request gets the error and the others get their results (a bad input, or memory, fails its own request only). `close()` drains: everything
accepted is run before the loop ends (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from qzhou.serving import errors


@dataclass
class _Job:
    """One request's rows: results fill in by row index; the future resolves when the last one arrives."""

    future: asyncio.Future
    size: int
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    done: bool = False  # finished, failed or timed out: its rows still queued are dropped


@dataclass
class _Row:
    job: _Job
    index: int
    payload: Any
    length: int
    arrived: float


@dataclass
class Limits:
    max_batch_tokens: int = 16384
    max_batch_requests: int = 128  # rows (inputs) per batch
    max_wait_ms: float = 5.0
    max_queue: int = 4096  # inputs waiting or running; more is a 429
    request_timeout: float = 60.0


class Batcher:
    """`run(payloads) -> results` (same length, same order) is called in one worker thread with at most
    `max_batch_requests` payloads whose padded size, rows x longest length, stays within `max_batch_tokens`."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], limits: Limits, metrics: Any = None,
                 name: str = "embed"):
        self.run, self.limits, self.metrics, self.name = run, limits, metrics, name
        self._pending: list[_Row] = []
        self._in_use = 0  # rows accepted and not yet answered (waiting or running)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"qzhou-{name}-model")
        self._batch_seconds = 0.05  # running mean of one batch's time, for Retry-After

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"qzhou-{self.name}-batcher")

    async def close(self) -> None:
        """Stop taking requests, run everything already accepted, then stop the worker thread."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return self._in_use

    # ------------------------------------------------------------------ requests
    async def submit(self, items: Sequence[tuple[Any, int]], timeout: float | None = None) -> list[Any]:
        """Queue one request's `(payload, length)` rows and wait for their results, in order."""
        if self._closing or self._task is None:
            raise errors.unavailable("the server is shutting down; retry on another replica")
        n = len(items)
        if self._in_use + n > self.limits.max_queue:
            waves = (self._in_use + n) / max(1, self.limits.max_batch_requests)
            raise errors.queue_full(max(1, round(waves * self._batch_seconds + 0.5)), self.limits.max_queue)
        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), n, [None] * n, n)
        now = loop.time()
        self._pending.extend(_Row(job, i, p, length, now) for i, (p, length) in enumerate(items))
        self._in_use += n
        self._gauge()
        self._wake.set()
        timeout = self.limits.request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError:
            self._finish(job)
            raise errors.timed_out(timeout) from None
        except asyncio.CancelledError:  # the client went away
            self._finish(job)
            raise

    def _finish(self, job: _Job) -> None:
        """Mark a job answered (result, error or timeout) and give its rows' queue places back."""
        if job.done:
            return
        job.done = True
        self._in_use -= job.size
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue.labels(self.name).set(self._in_use)

    # ------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        while True:
            self._pending = [r for r in self._pending if not r.job.done]
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            batch = self.plan()
            taken = {id(r) for r in batch}
            self._pending = [r for r in self._pending if id(r) not in taken]
            await self._execute(batch)

    async def _gather(self) -> None:
        """Wait up to max_wait_ms after the oldest waiting row for more rows, unless a batch is already full."""
        loop = asyncio.get_running_loop()
        deadline = self._pending[0].arrived + self.limits.max_wait_ms / 1000
        while not self._closing and len(self.plan()) == len(self._pending):
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def plan(self) -> list[_Row]:
        """The next batch: the longest waiting rows, as many as fit rows x longest <= max_batch_tokens (at least
        one, however long) and max_batch_requests."""
        rows = sorted((r for r in self._pending if not r.job.done), key=lambda r: -r.length)
        if not rows:
            return []
        width, cap = rows[0].length, self.limits.max_batch_requests
        n = max(1, min(cap, self.limits.max_batch_tokens // max(1, width)))
        return rows[:n]

    async def _execute(self, batch: list[_Row]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.metrics is not None:
            for r in batch:
                self.metrics.queue_seconds.labels(self.name).observe(start - r.arrived)
            self.metrics.batch_tokens.labels(self.name).observe(len(batch) * batch[0].length)
        try:
            results = await self._call(batch)
        except Exception as e:  # noqa: BLE001 - the batch's requests are re-run in halves below
            by_job: dict[int, list[_Row]] = {}
            for r in batch:
                by_job.setdefault(id(r.job), []).append(r)
            await self._isolate(list(by_job.values()), e)
            return
        finally:
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (loop.time() - start)
        self._deliver(batch, results)

    async def _call(self, batch: list[_Row]) -> Sequence[Any]:
        t0 = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self.run,
                                                                   [r.payload for r in batch])
        if self.metrics is not None:
            self.metrics.inference_seconds.labels(self.name).observe(time.perf_counter() - t0)
        if len(results) != len(batch):
            raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} inputs")
        return results

    async def _isolate(self, groups: list[list[_Row]], error: Exception) -> None:
        """Requests (row groups) that failed together: a lone request gets the error; several are split in halves
        and each half runs again, down to the request that fails alone (about 2 log2(n) extra forwards)."""
        groups = [g for g in groups if not g[0].job.done]
        if len(groups) == 1:
            self._fail(groups[0][0].job, error)
            return
        half = len(groups) // 2
        for part in (groups[:half], groups[half:]):
            if not part:
                continue
            rows = [r for g in part for r in g]
            try:
                self._deliver(rows, await self._call(rows))
            except Exception as e:  # noqa: BLE001 - narrowed down in the recursion
                await self._isolate(part, e)

    def _deliver(self, rows: list[_Row], results: Sequence[Any]) -> None:
        for r, res in zip(rows, results):
            job = r.job
            if job.done:
                continue
            job.results[r.index] = res
            job.remaining -= 1
            if job.remaining == 0:
                self._finish(job)
                job.future.set_result(job.results)

    def _fail(self, job: _Job, e: Exception) -> None:
        if job.done:
            return
        self._finish(job)
        if self.metrics is not None:
            self.metrics.batch_failures.labels(self.name).inc()
        job.future.set_exception(errors.failed(f"{type(e).__name__}: {e}"))


class Service:
    """What the embed and rerank services share: one tokenizer thread (tokenizing neither blocks the event loop
    nor waits behind the model thread) in front of one batcher, and the inputs-per-request limit."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], limits: Limits, metrics: Any,
                 max_client_batch: int, name: str):
        self.limits, self.metrics, self.max_client_batch, self.name = limits, metrics, max_client_batch, name
        self.batcher = Batcher(run, limits, metrics, name)
        self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"qzhou-{name}-tokenize")

    def check_count(self, n: int, field: str, what: str) -> None:
        if n > self.max_client_batch:
            raise errors.invalid(f"field '{field}': {n} {what}, over the limit of {self.max_client_batch} per "
                                 "request (server flag --max-client-batch)", "too_many_inputs")

    async def rows(self, tokenize: Callable[..., list[list[int]]], *args: Any) -> tuple[list[list[int]], list[Any]]:
        """`tokenize(*args)` in the tokenizer thread, then the model's result for every token-id row, in order."""
        t0 = time.perf_counter()
        ids = await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, tokenize, *args)
        if self.metrics is not None:
            self.metrics.tokenize_seconds.labels(self.name).observe(time.perf_counter() - t0)
        return ids, await self.batcher.submit([(x, len(x)) for x in ids])

    async def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()
        self._tokenize_pool.shutdown(wait=True)
