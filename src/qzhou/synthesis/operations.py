"""The four synthesis operations (QZhou: paraphrase, extend, hard-negatives; Qwen3: queries from documents) and
the per-task policy.

Each operation is an async function `(record, ctx) -> [output records]` that asks `ctx.call(Call)` for LLM
answers. The runner calls it twice: once with a live context (answers come from the journal, or from the API
and are journaled) and once replaying from the journal only, to write the output in input order. So an
operation must be deterministic given its answers: every "random" choice (negative mode, persona, question
type, length, language) is drawn from a hash of the input text, the variant number and --seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qzhou.data.records import normalize_text
from qzhou.synthesis.checks import (
    check_distinct,
    check_language,
    check_length,
    check_paraphrase,
    difference,
    length_unit,
    text_field,
    text_length,
)
from qzhou.synthesis.client import InvalidOutput
from qzhou.synthesis.prompts import Prompt

#: QZhou's three ways a hard negative is worse than the positive
MODES = {
    "semantic_deviation": "it drifts from what the query asks (a related but different fact, entity, number or "
                          "condition), so it does not really answer it",
    "irrelevant_information": "it mixes in information the query does not need, so it is not a precise answer",
    "other_aspect": "it covers a different aspect of the same topic than the one the query asks about",
}
QUESTION_TYPES = ("keywords", "acquire_knowledge", "summary", "yes_or_no", "background")
DIFFICULTIES = ("high_school", "university", "phd")
#: per-task policy (QZhou): STS and classification are only paraphrased, so their scores and labels stay true
POLICY = {"retrieval": ("paraphrase", "extend", "hard-negatives"), "sts": ("paraphrase",),
          "classification": ("paraphrase",)}
PARAPHRASE_FIELDS = {"retrieval": ("query",), "sts": ("text1",), "classification": ("text",)}


@dataclass
class Call:
    """One LLM question: `step` and `inputs` name it in the journal key, `validate` cleans or rejects answers."""

    step: str
    prompt: Prompt
    values: dict[str, Any]
    validate: Callable[[dict], dict]
    inputs: Any


class CallFailed(Exception):
    """A call has no answer (its retries were spent in this or an earlier run)."""


@dataclass
class Options:
    n: int = 1
    fields: tuple[str, ...] | None = None
    mode: str | None = None
    length_tol: float | None = None
    min_diff: float = 0.30
    text_field: str = "text"
    personas: list[str] = field(default_factory=list)
    persona_choices: int = 5
    languages: tuple[str, ...] = ("English",)
    lengths: tuple[int, int] = (5, 15)
    config: str = "llm"
    seed: int = 0


def pick(seq, *parts: Any):
    """A deterministic choice from `seq` seeded by `parts` (same input, same choice on every run)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return seq[int.from_bytes(h[:8], "big") % len(seq)]


def _first_pos(record: dict) -> str:
    return record["pos"][0]


async def paraphrase(record: dict, task: str, ctx) -> list[dict]:
    """N variants; each replaces the chosen fields (retrieval: query; sts: text1; classification: text) with a
    paraphrase and keeps everything else (positives, negatives, score, label)."""
    o, tol = ctx.options, ctx.options.length_tol or 0.15
    if task == "classification" and "text" not in record:
        fields = o.fields or ("query",)  # the training form
    else:
        fields = o.fields or PARAPHRASE_FIELDS[task]
    out = []
    for v in range(o.n):
        new = dict(record)
        for f in fields:
            original = record[f][0] if isinstance(record[f], list) else record[f]

            def validate(data, original=original):
                text = text_field(data, "paraphrase")
                check_paraphrase(original, text, tol, o.min_diff)
                return {"paraphrase": text}

            values = {"text": original, "length": text_length(original), "unit": length_unit(original),
                      "variant": v + 1}
            answer = await ctx.call(Call("paraphrase", ctx.prompts["paraphrase"], values, validate, [original, v]))
            text = answer["paraphrase"]
            new[f] = [text, *record[f][1:]] if isinstance(record[f], list) else text
        out.append(ctx.provenance(new, record, variant=v, fields=list(fields)))
    return out


def _mode(o: Options, *parts) -> str:
    if o.mode:
        return o.mode
    return pick(list(MODES), o.seed, *parts)


async def extend(record: dict, task: str, ctx) -> list[dict]:
    """N new (query, positive, hard negative) triplets in the field of a seed (query, positive)."""
    o, tol = ctx.options, ctx.options.length_tol or 0.20
    query, pos = record["query"], _first_pos(record)
    out = []
    for v in range(o.n):
        mode = _mode(o, "extend", query, pos, v)

        def validate(data):
            q, p, n = text_field(data, "query"), text_field(data, "positive"), text_field(data, "negative")
            check_length(q, query, tol, "the query")
            check_length(p, pos, tol, "the positive")
            check_length(n, pos, tol, "the negative")
            check_language(q, query, "the query")
            if difference(query, q) < o.min_diff:
                raise InvalidOutput("the new query only rewrites the seed query; extend the topic instead")
            check_distinct(n, [p, pos, q], "the negative")
            check_distinct(p, [pos, q], "the positive")
            return {"query": q, "positive": p, "negative": n}

        values = {"query": query, "positive": pos, "mode": mode, "mode_text": MODES[mode],
                  "query_length": text_length(query), "positive_length": text_length(pos), "unit": length_unit(pos),
                  "variant": v + 1}
        a = await ctx.call(Call("extend", ctx.prompts["extend"], values, validate, [query, pos, mode, v]))
        new = {"query": a["query"], "pos": [a["positive"]], "neg": [a["negative"]]}
        if "instruction" in record:
            new["instruction"] = record["instruction"]
        out.append(ctx.provenance(new, record, variant=v, mode=mode))
    return out


async def hard_negatives(record: dict, task: str, ctx) -> list[dict]:
    """N negatives for an existing (query, positive), cycling through the three modes; the record keeps its
    negatives and gains the new ones. A failed negative is reported and the others are kept."""
    o, tol = ctx.options, ctx.options.length_tol or 0.20
    query, pos = record["query"], _first_pos(record)
    start = list(MODES).index(_mode(o, "hard-negatives", query, pos))
    negs, modes, failures = list(record.get("neg", [])), [], []
    for v in range(o.n):
        mode = o.mode or list(MODES)[(start + v) % len(MODES)]

        def validate(data):
            n = text_field(data, "negative")
            check_length(n, pos, tol, "the negative")
            check_language(n, pos, "the negative")
            check_distinct(n, [query, *record["pos"], *negs], "the negative")
            return {"negative": n}

        values = {"query": query, "positive": pos, "mode": mode, "mode_text": MODES[mode],
                  "positive_length": text_length(pos), "unit": length_unit(pos), "variant": v + 1}
        try:
            a = await ctx.call(Call("hard-negative", ctx.prompts["hard_negative"], values, validate,
                                    [query, pos, mode, v]))
        except CallFailed as e:
            failures.append(e)
            continue
        if normalize_text(a["negative"]) not in {normalize_text(t) for t in negs}:
            negs.append(a["negative"])
            modes.append(mode)
    if not modes:
        if failures:
            raise failures[0]
        return []
    return [ctx.provenance({**record, "neg": negs}, record, modes=modes)]


async def queries(record: dict, task: str, ctx) -> list[dict]:
    """Qwen3's two stages per document: configuration (character among 5 candidate personas, question type,
    difficulty; by the LLM, or drawn at random with --config random), then the query for a drawn length and
    language. Output: (query, [document]) retrieval records."""
    o = ctx.options
    doc = record[o.text_field]
    out = []
    for v in range(o.n):
        rng = (o.seed, doc, v)
        pool = list(o.personas)
        candidates = []
        for i in range(min(o.persona_choices, len(pool))):
            candidates.append(pool.pop(int(hashlib.sha256(repr((*rng, i)).encode()).hexdigest(), 16) % len(pool)))
        if o.config == "llm":
            config = await ctx.call(Call("queries-config", ctx.prompts["queries_config"],
                                         {"passage": doc, "characters": "\n".join(candidates),
                                          "types": ", ".join(QUESTION_TYPES), "difficulties": ", ".join(DIFFICULTIES)},
                                         _config_validator(candidates), [doc, candidates]))
        else:
            config = {"character": pick(candidates, *rng, "c"), "type": pick(QUESTION_TYPES, *rng, "t"),
                      "difficulty": pick(DIFFICULTIES, *rng, "d")}
        length = pick(range(o.lengths[0], o.lengths[1] + 1), *rng, "length")
        language = pick(o.languages, *rng, "language")

        def validate(data, length=length):
            q = text_field(data, "query")
            n = text_length(q)
            if n > 2 * length + 5:
                raise InvalidOutput(f"the query has {n} words; about {length} were asked for")
            if n > 5 and normalize_text(q) in normalize_text(doc):
                raise InvalidOutput("the query copies the passage; ask about it in your own words")
            return {"query": q}

        values = {"character": config["character"], "passage": doc, "type": config["type"],
                  "difficulty": config["difficulty"], "length": length, "language": language}
        a = await ctx.call(Call("queries-generate", ctx.prompts["queries_generate"], values, validate,
                                [doc, config, length, language]))
        new = {"query": a["query"], "pos": [doc], "neg": []}
        if isinstance(record.get("instruction"), str):
            new["instruction"] = record["instruction"]
        out.append(ctx.provenance(new, record, variant=v, persona=config["character"], question_type=config["type"],
                                  difficulty=config["difficulty"], length=length, language=language))
    return out


def _config_validator(candidates: list[str]) -> Callable[[dict], dict]:
    by_key = {normalize_text(c): c for c in candidates}

    def validate(data: dict) -> dict:
        data = {str(k).lower(): v for k, v in data.items()}  # "Character" or "character": small models vary
        char = normalize_text(str(data.get("character", ""))).strip(" .")
        match = by_key.get(char) or next((c for k, c in by_key.items() if char and (char in k or k in char)), None)
        if match is None:
            raise InvalidOutput(f"Character must be one of the candidates {candidates} (got {data.get('character')!r})")
        qtype = str(data.get("question_type", "")).strip().lower()
        if qtype not in QUESTION_TYPES:
            raise InvalidOutput(f"Question_Type must be one of {list(QUESTION_TYPES)} (got {qtype!r})")
        diff = str(data.get("difficulty", "")).strip().lower()
        if diff not in DIFFICULTIES:
            raise InvalidOutput(f"Difficulty must be one of {list(DIFFICULTIES)} (got {diff!r})")
        return {"character": match, "type": qtype, "difficulty": diff}

    return validate


OPERATIONS = {"paraphrase": paraphrase, "extend": extend, "hard-negatives": hard_negatives, "queries": queries}
PROMPTS = {"paraphrase": ("paraphrase",), "extend": ("extend",), "hard-negatives": ("hard_negative",),
           "queries": ("queries_config", "queries_generate")}
