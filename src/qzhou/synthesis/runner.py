"""`synthesize()`: check the input, run an operation over it with bounded concurrency, then write the output.

Three passes over the input file (it is streamed each time, never held whole):
1. check every record (schema, per-task policy, fields) before the first request, so a bad line 9000 does not
   surface after an hour of paid requests;
2. work: a fixed pool of workers runs the operation on each record; answers come from the journal or the API
   and are journaled as they arrive;
3. write: the operation is replayed from the journal alone, in input order, exact duplicates are dropped, and
   OUTPUT is published atomically (OUTPUT.failed.jsonl lists the records that got no answer, with the reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from qzhou.data.readers import DataError, JsonlWriter, read_rows
from qzhou.data.records import check_record, describe_errors, normalize_text, task_of, texts_of
from qzhou.synthesis.client import ChatClient, RequestFailed
from qzhou.synthesis.operations import MODES, OPERATIONS, POLICY, PROMPTS, Call, CallFailed, Options
from qzhou.synthesis.prompts import load_personas, load_prompt
from qzhou.synthesis.store import JobStore, request_key


class Context:
    """What an operation sees: its options, prompts, `call` (live or replay) and `provenance`."""

    def __init__(self, operation, options, prompts, store, client, model, params, retry_failed, live,
                 inflight=None):
        self.operation, self.options, self.prompts = operation, options, prompts
        self.store, self.client, self.model, self.params = store, client, model, params
        self.retry_failed, self.live = retry_failed, live
        self.inflight: dict[str, asyncio.Future] = {} if inflight is None else inflight  # shared by the workers
        self.source = ""

    async def call(self, c: Call) -> dict:
        messages = c.prompt.render(**c.values)
        key = request_key(c.step, c.inputs, messages, self.model, self.params)
        entry = self.store.get(key)
        if entry is not None and entry.status == "done":
            return entry.output
        if not self.live or (entry is not None and not self.retry_failed):
            raise CallFailed(entry.error if entry else "no answer was journaled")
        if key in self.inflight:  # the same question from another record, asked right now: wait for that answer
            return await asyncio.shield(self.inflight[key])
        future = self.inflight[key] = asyncio.get_running_loop().create_future()
        try:
            data = await self._ask(key, c, messages)
            future.set_result(data)
            return data
        except BaseException as e:
            future.set_exception(e if isinstance(e, Exception) else CallFailed("cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self.inflight[key]

    async def _ask(self, key: str, c: Call, messages: list[dict]) -> dict:
        try:
            reply = await self.client.complete(messages, c.validate)
        except RequestFailed as e:
            self.store.put(key, operation=c.step, source=self.source, status="failed", request=messages,
                           error=str(e), attempts=e.attempts, prompt_tokens=e.prompt_tokens,
                           completion_tokens=e.completion_tokens, model=self.model)
            raise CallFailed(str(e)) from None
        self.store.put(key, operation=c.step, source=self.source, status="done", output=reply.data,
                       request=messages, attempts=reply.attempts, prompt_tokens=reply.prompt_tokens,
                       completion_tokens=reply.completion_tokens, model=self.model)
        return reply.data

    def provenance(self, new: dict, record: dict, **extra: Any) -> dict:
        new = {k: v for k, v in new.items() if k not in ("id", "source")}
        new["source"] = {"operation": self.operation, "model": self.model,
                         "record": record.get("id", self.source), **extra}
        new["id"] = "syn-" + hashlib.sha256(json.dumps([texts_of(new), extra], ensure_ascii=False)
                                            .encode()).hexdigest()[:16]
        return new


def check_input(operation: str, where: str, record: Any, options: Options) -> str:
    """-> the record's task; DataError naming file:line and field when it cannot be used."""
    if operation == "queries":
        text = record.get(options.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {options.text_field!r} must hold the document text (got {text!r:.60}); "
                            "pick the field with --field")
        return "documents"
    task, errors, _ = check_record(record)
    if errors:
        raise DataError(f"{where}: " + describe_errors(errors))
    if operation not in POLICY[task]:
        raise DataError(f"{where}: {operation} applies to retrieval records, this is a {task} record (policy: STS "
                        "and classification data get paraphrase only, so scores and labels stay true)")
    if operation == "paraphrase" and options.fields:
        for f in options.fields:
            value = record.get(f)
            if not (isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], str))):
                raise DataError(f"{where}: --fields names {f!r}, which this {task} record has no text in")
    return task


def _rows(path, limit):
    for i, (where, record) in enumerate(read_rows(path)):
        if limit is not None and i >= limit:
            return
        yield where, record


def _dedup_key(record: dict) -> bytes:
    key = [normalize_text(t) for t in texts_of(record)] + [record.get("score"), record.get("label")]
    return hashlib.blake2b(json.dumps(key, ensure_ascii=False).encode(), digest_size=16).digest()


def synthesize(operation: str, input: str | Path, output: str | Path, *, base_url: str, model: str,
               options: Options | None = None, params: dict[str, Any] | None = None, store: str | Path | None = None,
               retry_failed: bool = False, limit: int | None = None, instruction: str | None = None,
               prompts_dir: str | Path | None = None, progress: bool = True, **client_kw: Any) -> dict:
    """Run `operation` over the records in `input`; returns the summary (also what the CLI prints)."""
    if operation not in OPERATIONS:
        raise KeyError(f"unknown operation {operation!r}; choose from {', '.join(OPERATIONS)}")
    options = options or Options()
    if operation == "queries" and not options.personas:
        options.personas = load_personas()
    if options.mode is not None and options.mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)} (got {options.mode!r})")
    if options.n < 1:
        raise ValueError(f"--n must be >= 1 (got {options.n})")
    params = dict(params or {})
    output = Path(output)
    prompts = {name: load_prompt(name, prompts_dir) for name in PROMPTS[operation]}
    count = 0
    for where, record in _rows(input, limit):  # pass 1: check everything before spending anything
        check_input(operation, where, record, options)
        count += 1
    store_path = Path(store) if store else output.with_name(output.name + ".jobs.sqlite")
    started = time.perf_counter()
    with JobStore(store_path) as journal:
        client = ChatClient(base_url, model, params=params, **client_kw)
        usage, stats = asyncio.run(_work(operation, input, limit, count, options, prompts, journal, client,
                                         model, params, retry_failed, progress))
        elapsed = time.perf_counter() - started
        written, duplicates, failed = _write(operation, input, output, limit, options, prompts, journal, model,
                                             params, instruction)
        totals = journal.totals()
    summary = {"operation": operation, "input": str(input), "output": str(output), "records": count,
               "written": written, "duplicates_dropped": duplicates, "failed_records": failed,
               "store": str(store_path), "this_run": {**usage.as_dict(), **stats, "seconds": round(elapsed, 2)},
               "journal": totals}
    if failed:
        summary["hint"] = (f"{failed} record(s) got no answer (reasons in {output}.failed.jsonl); "
                           "run the same command with --retry-failed to try them again")
    return summary


async def _work(operation, input, limit, count, options, prompts, journal, client, model, params, retry_failed,
                progress):
    from tqdm import tqdm

    run = OPERATIONS[operation]
    rows = iter(_rows(input, limit))
    stats = {"records_failed": 0}
    bar = tqdm(total=count, desc=f"synth {operation}", unit="rec", disable=not progress, dynamic_ncols=True)

    inflight: dict = {}

    async def worker():
        ctx = Context(operation, options, prompts, journal, client, model, params, retry_failed, live=True,
                      inflight=inflight)
        for where, record in rows:  # a shared iterator: each record goes to exactly one worker
            ctx.source = where
            try:
                await run(record, task_of(record) or "documents", ctx)
            except CallFailed:
                stats["records_failed"] += 1
            bar.update(1)
            u = client.usage
            bar.set_postfix(ok=u.ok, failed=u.failed, retries=sum(u.retries.values()),
                            tokens=u.prompt_tokens + u.completion_tokens, refresh=False)

    async with client:
        tasks = [asyncio.create_task(worker()) for _ in range(client.concurrency)]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
        finally:
            bar.close()
    return client.usage, stats


def _write(operation, input, output, limit, options, prompts, journal, model, params, instruction):
    run = OPERATIONS[operation]
    ctx = Context(operation, options, prompts, journal, None, model, params, False, live=False)
    seen: set[bytes] = set()
    duplicates = 0
    failures = []

    async def replay():
        nonlocal duplicates
        with JsonlWriter(output) as out:
            for where, record in _rows(input, limit):
                ctx.source = where
                try:
                    produced = await run(record, task_of(record) or "documents", ctx)
                except CallFailed as e:
                    failures.append({"source": where, "operation": operation, "error": str(e)})
                    continue
                for new in produced:
                    if instruction and "instruction" not in new:
                        new["instruction"] = instruction
                    key = _dedup_key(new)
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                    out.write(new)
        return out.count

    written = asyncio.run(replay())
    failed_path = output.with_name(output.name + ".failed.jsonl")
    if failures:
        with JsonlWriter(failed_path) as f:
            for item in failures:
                f.write(item)
    else:
        failed_path.unlink(missing_ok=True)
    return written, duplicates, len(failures)
