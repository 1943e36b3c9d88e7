"""`qzhou synth paraphrase | extend | hard-negatives | queries` and `qzhou filter`: argument parsing only."""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def _pair(text: str, flag: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"{flag} takes MIN-MAX, e.g. 5-15 (got {text!r})") from None


def cmd_synth(a: argparse.Namespace) -> None:
    from qzhou.synthesis.operations import Options
    from qzhou.synthesis.prompts import load_personas
    from qzhou.synthesis.runner import synthesize

    model = a.model or os.environ.get("QZHOU_LLM_MODEL")
    if not model:
        raise ValueError("pass --model (the name the server serves) or set $QZHOU_LLM_MODEL")
    opts = Options(n=a.n, seed=a.seed, length_tol=getattr(a, "length_tol", None),
                   min_diff=getattr(a, "min_diff", 0.30), mode=getattr(a, "mode", None))
    if a.operation == "paraphrase" and a.fields:
        opts.fields = tuple(f.strip() for f in a.fields.split(",") if f.strip())
    if a.operation == "queries":
        opts.text_field, opts.config = a.field, a.config
        opts.personas = load_personas(a.personas)
        opts.languages = tuple(x.strip() for x in a.languages.split(",") if x.strip())
        opts.lengths = _pair(a.lengths, "--lengths")
    params = {"temperature": a.temperature, "max_tokens": a.max_tokens}
    if a.json_mode:
        params["response_format"] = {"type": "json_object"}
    try:
        summary = synthesize(a.operation, a.input, a.output, base_url=a.base_url, model=model, options=opts,
                             params=params, store=a.store, retry_failed=a.retry_failed, limit=a.limit,
                             instruction=a.instruction, prompts_dir=a.prompts, progress=not a.quiet,
                             api_key_env=a.api_key_env, concurrency=a.concurrency, rate_limit=a.rate_limit,
                             timeout=a.timeout, max_retries=a.max_retries, max_attempts=a.max_attempts,
                             price_in=a.price_in, price_out=a.price_out)
    except KeyboardInterrupt:
        sys.exit("\ninterrupted: every finished answer is in the job store; run the same command to resume")
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def cmd_filter(a: argparse.Namespace) -> None:
    from qzhou.mining import load_embedder
    from qzhou.synthesis.filter import filter_pairs

    summary = filter_pairs(a.input, a.output, load_embedder(a.model, a.dtype, a.device), threshold=a.threshold,
                           instruction=a.instruction, batch_tokens=a.batch_tokens, progress=not a.quiet)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="records .jsonl (queries: documents with a text field)")
    p.add_argument("--output", required=True, help="synthesized records .jsonl (+ OUTPUT.failed.jsonl)")
    g = p.add_argument_group("endpoint")
    g.add_argument("--base-url", default=os.environ.get("QZHOU_LLM_BASE_URL", DEFAULT_URL),
                   help=f"OpenAI-compatible API root (default: $QZHOU_LLM_BASE_URL or {DEFAULT_URL})")
    g.add_argument("--model", default=None, help="model name sent to the server (default: $QZHOU_LLM_MODEL)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    g.add_argument("--rate-limit", type=float, default=None, help="at most this many requests per second")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    g.add_argument("--max-retries", type=int, default=6, help="retries on 429 / 5xx / timeouts per answer")
    g.add_argument("--max-attempts", type=int, default=4,
                   help="answers asked for per request when they are malformed or break a constraint")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--max-tokens", type=int, default=512)
    g.add_argument("--json-mode", action="store_true", help="send response_format json_object (vLLM, OpenAI, "
                                                            "llama.cpp constrain the output to JSON)")
    g.add_argument("--price-in", type=float, default=0.0, help="price per million prompt tokens (cost report)")
    g.add_argument("--price-out", type=float, default=0.0, help="price per million completion tokens")
    j = p.add_argument_group("job")
    j.add_argument("--store", default=None, help="job journal (default: OUTPUT.jobs.sqlite); rerun the same "
                                                 "command to resume")
    j.add_argument("--retry-failed", action="store_true", help="ask again for requests that failed before")
    j.add_argument("--limit", type=int, default=None, help="only the first N input records")
    j.add_argument("--n", type=int, default=1, help="variants (paraphrase, extend, queries) or negatives per record")
    j.add_argument("--seed", type=int, default=0, help="seed of qzhou's draws (modes, personas, lengths)")
    j.add_argument("--instruction", default=None, help="store this instruction on output records lacking one")
    j.add_argument("--prompts", default=None, help="a folder of prompt files replacing the shipped ones")
    j.add_argument("--quiet", action="store_true")


def add_parser(sub) -> None:
    from qzhou.synthesis.operations import MODES

    synth = sub.add_parser("synth", help="synthesize training data through an OpenAI-compatible LLM API")
    ops = synth.add_subparsers(dest="operation", required=True)

    p = ops.add_parser("paraphrase", help="same meaning, other words (retrieval, STS, classification; labels kept)")
    _common(p)
    p.add_argument("--fields", default=None, help="fields to rewrite, comma-separated (default: retrieval query, "
                                                  "sts text1, classification text)")
    p.add_argument("--length-tol", type=float, default=0.15, help="allowed length change (default 0.15)")
    p.add_argument("--min-diff", type=float, default=0.30, help="minimum character-level difference (default 0.30)")

    p = ops.add_parser("extend", help="a new (query, positive, hard negative) in the field of each seed pair")
    _common(p)
    p.add_argument("--mode", choices=list(MODES), default=None, help="negative mode (default: drawn per record)")
    p.add_argument("--length-tol", type=float, default=0.20)
    p.add_argument("--min-diff", type=float, default=0.30, help="how far the new query must be from the seed")

    p = ops.add_parser("hard-negatives", help="LLM-written negatives for (query, positive) records")
    _common(p)
    p.add_argument("--mode", choices=list(MODES), default=None, help="negative mode (default: cycle all three)")
    p.add_argument("--length-tol", type=float, default=0.20)

    p = ops.add_parser("queries", help="Qwen3-style queries from documents (persona, type, difficulty)")
    _common(p)
    p.add_argument("--field", default="text", help="the field holding the document text (default: text)")
    p.add_argument("--personas", default=None, help="personas file, one a line (default: the shipped list)")
    p.add_argument("--languages", default="English", help="query languages, comma-separated, drawn per query")
    p.add_argument("--lengths", default="5-15", help="query length in words, MIN-MAX, drawn per query")
    p.add_argument("--config", choices=["llm", "random"], default="llm",
                   help="llm: the model picks persona/type/difficulty (Qwen3); random: drawn, one request less")
    synth.set_defaults(func=cmd_synth)

    p = sub.add_parser("filter", help="drop (query, positive) pairs an embedder scores below a threshold")
    p.add_argument("--model", required=True, help="a qzhou / sentence-transformers embedder folder")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="kept records (+ OUTPUT.dropped.jsonl with scores)")
    p.add_argument("--threshold", type=float, default=0.7, help="minimum cosine (Qwen3: 0.7)")
    p.add_argument("--instruction", default=None, help="query instruction for records without one")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_filter)
