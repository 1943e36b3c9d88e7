"""The dynamic batcher alone (no HTTP, no model): batches follow the token budget longest first, every request
gets exactly its own results in order, a failing batch fails only the request that fails alone, a full queue is
a 429 with Retry-After, a slow batch times its requests out, and close() runs everything accepted."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from qzhou.serving import errors
from qzhou.serving.batcher import Batcher, Limits, _Row


def _expected_batches(lengths: list[int], budget: int, cap: int) -> list[list[int]]:
    """Reference: take the longest remaining rows while rows x longest <= budget and rows <= cap."""
    left = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out = []
    while left:
        width = lengths[left[0]]
        n = 1
        while n < len(left) and n < cap and (n + 1) * width <= budget:
            n += 1
        out.append(sorted(left[:n]))
        left = left[n:]
    return out


def test_plan_packs_longest_first_within_budget():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 30))]
        budget, cap = rng.choice([16, 64, 200]), rng.choice([1, 4, 128])
        b = Batcher(lambda xs: xs, Limits(max_batch_tokens=budget, max_batch_requests=cap))
        job = type("J", (), {"done": False})()
        b._pending = [_Row(job, i, i, n, 0.0) for i, n in enumerate(lengths)]
        got = []
        while b._pending:
            batch = b.plan()
            got.append(sorted(r.payload for r in batch))
            taken = {id(r) for r in batch}
            b._pending = [r for r in b._pending if id(r) not in taken]
        want = _expected_batches(lengths, budget, cap)
        assert [sorted(lengths[i] for i in g) for g in got] == [sorted(lengths[i] for i in g) for g in want]
        assert all(len(g) <= cap for g in got)


def _run_recording(calls: list[list]):
    def run(payloads):
        calls.append(list(payloads))
        if any(p == "boom" for p in payloads):
            raise RuntimeError("bad input")
        return [p.upper() for p in payloads]
    return run


def test_requests_get_their_own_results_and_batches_merge():
    calls: list[list] = []

    async def main():
        b = Batcher(_run_recording(calls), Limits(max_batch_tokens=1000, max_batch_requests=64, max_wait_ms=20))
        b.start()
        reqs = [[f"r{i}-{j}" for j in range(i % 4 + 1)] for i in range(40)]
        outs = await asyncio.gather(*(b.submit([(x, len(x)) for x in r]) for r in reqs))
        await b.close()
        return reqs, outs

    reqs, outs = asyncio.run(main())
    assert outs == [[x.upper() for x in r] for r in reqs]
    assert len(calls) < 40  # requests submitted together share forwards
    assert sorted(x for c in calls for x in c) == sorted(x for r in reqs for x in r)  # each row ran once


def test_failing_batch_fails_only_the_failing_request():
    calls: list[list] = []

    async def main():
        b = Batcher(_run_recording(calls), Limits(max_wait_ms=50))
        b.start()
        good = [["a", "b"], ["c"], ["d", "e", "f"]]
        tasks = [b.submit([(x, 1) for x in r]) for r in good[:2]] + [b.submit([("x", 1), ("boom", 1)])] + \
                [b.submit([(x, 1) for x in good[2]])]
        outs = await asyncio.gather(*tasks, return_exceptions=True)
        after = await b.submit([("g", 1)])
        await b.close()
        return outs, after

    outs, after = asyncio.run(main())
    assert outs[0] == ["A", "B"] and outs[1] == ["C"] and outs[3] == ["D", "E", "F"]
    assert isinstance(outs[2], errors.ApiError) and outs[2].status == 500 and "bad input" in outs[2].message
    assert after == ["G"]
    assert len(calls[0]) == 8  # one merged batch failed, then each request ran alone


def test_one_bad_request_among_many_costs_few_forwards():
    calls: list[list] = []

    async def main():
        b = Batcher(_run_recording(calls), Limits(max_wait_ms=100))
        b.start()
        reqs = [[f"r{i}"] for i in range(32)]
        reqs[19] = ["boom"]
        outs = await asyncio.gather(*(b.submit([(x, 1) for x in r]) for r in reqs), return_exceptions=True)
        await b.close()
        return outs

    outs = asyncio.run(main())
    assert [i for i, o in enumerate(outs) if isinstance(o, errors.ApiError)] == [19]
    assert all(o == [f"R{i}"] for i, o in enumerate(outs) if i != 19)
    assert len(calls) <= 1 + 2 * 5  # bisection: two forwards per level of log2(32)


def test_queue_full_is_429_with_retry_after_and_slow_batch_times_out():
    gate = threading.Event()

    def run(payloads):
        gate.wait(10)
        return payloads

    async def main():
        b = Batcher(run, Limits(max_queue=5, max_wait_ms=0, request_timeout=0.5))
        b.start()
        first = asyncio.ensure_future(b.submit([(1, 1), (2, 1), (3, 1)]))
        await asyncio.sleep(0.05)
        with pytest.raises(errors.ApiError) as full:
            await b.submit([(4, 1), (5, 1), (6, 1)])
        with pytest.raises(errors.ApiError) as late:
            await first
        gate.set()
        ok = await b.submit([(7, 1), (8, 1), (9, 1), (10, 1), (11, 1)])  # places came back after the timeout
        await b.close()
        return full.value, late.value, ok

    full, late, ok = asyncio.run(main())
    assert full.status == 429 and int(full.headers["Retry-After"]) >= 1
    assert late.status == 504
    assert ok == [7, 8, 9, 10, 11]


def test_close_runs_everything_accepted_then_refuses():
    async def main():
        b = Batcher(lambda xs: [x * 2 for x in xs], Limits(max_batch_requests=2, max_wait_ms=0))
        b.start()
        pending = [asyncio.ensure_future(b.submit([(i, 1)])) for i in range(10)]
        await asyncio.sleep(0)  # all submitted
        await b.close()
        outs = await asyncio.gather(*pending)
        with pytest.raises(errors.ApiError) as refused:
            await b.submit([(1, 1)])
        return outs, refused.value

    outs, refused = asyncio.run(main())
    assert outs == [[i * 2] for i in range(10)]
    assert refused.status == 503
