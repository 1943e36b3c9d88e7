"""Converters from common dataset shapes into unified records (QZhou's unified data transformation,
SYSTEMS.md §4). Each converter takes streamed (where, row) pairs and yields (where, record) or
(where, Skip(reason)); `convert()` writes records and routes skips to a side file or raises.

Retrieval-oriented -> {query, pos, neg}      STS-oriented -> {text1, text2, score}, both directions
classification -> {query, pos, neg, label, neg_labels} with the class id kept for the class-masked loss.
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from qzhou.data.readers import DataError, Row

RC_PROMPT = "请阅读上述文章，回答下列问题："  # QZhou's reading-comprehension prompt


@dataclass(frozen=True)
class Skip:
    reason: str


Out = Iterator[tuple[str, "dict[str, Any] | Skip"]]


def _get(row: dict, role: str, fields: dict[str, str], parse: Callable[[Any], Any] | None = None) -> Any:
    """The row's value for `role` (through `parse`, which may return a Skip), or a Skip naming the missing field
    (a bad row, not the end of the file)."""
    column = fields.get(role, role)
    if column not in row:
        return Skip(f"no field {column!r} for {role} (found {sorted(row)}); map it with --field {role}=NAME")
    return row[column] if parse is None else parse(row[column])


def _text(row, role, fields) -> str | Skip:
    value = _get(row, role, fields)
    if isinstance(value, Skip):
        return value
    if not isinstance(value, str):
        return Skip(f"field {fields.get(role, role)!r} is {type(value).__name__}, not a string")
    if not value.strip():
        return Skip(f"field {fields.get(role, role)!r} is empty")
    return value.strip()


def _skip(*values) -> Skip | None:
    """The first Skip among a row's values (so the first bad field is the one reported), or None."""
    return next((v for v in values if isinstance(v, Skip)), None)


def _texts(row, roles, fields):
    values = [_text(row, r, fields) for r in roles]
    return _skip(*values), values


def _stripped(value) -> str:
    return str(value).strip()


def title_body(rows, fields, body_role="body", **_) -> Out:
    for where, row in rows:
        bad, (title, body) = _texts(row, ["title", body_role], fields)
        yield where, bad or {"query": title, "pos": [body], "neg": []}


def qa(rows, fields, **_) -> Out:
    """question -> answer; with a `label` field (1/0), answers are grouped per question as pos / neg."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return
    labelled = fields.get("label", "label") in first[1]
    groups: OrderedDict[str, dict] = OrderedDict()
    for where, row in itertools.chain([first], rows):
        bad, (q, a) = _texts(row, ["question", "answer"], fields)
        if bad:
            yield where, bad
            continue
        if not labelled:
            yield where, {"query": q, "pos": [a], "neg": []}
            continue
        label = _get(row, "label", fields, _binary)
        if isinstance(label, Skip):
            yield where, label
            continue
        g = groups.setdefault(q, {"where": where, "pos": [], "neg": []})
        g["pos" if label else "neg"].append(a)
    yield from _grouped(groups, "question")


def chat(rows, fields, **_) -> Out:
    """Each user turn followed by an assistant turn becomes (query, pos)."""
    for where, row in rows:
        messages = _get(row, "messages", fields)
        if isinstance(messages, Skip):
            yield where, messages
            continue
        if not isinstance(messages, list):
            yield where, Skip("messages is not a list of {role, content}")
            continue
        pairs = 0
        for a, b in zip(messages, messages[1:]):
            if isinstance(a, dict) and isinstance(b, dict) and a.get("role") == "user" and b.get("role") == "assistant":
                if str(a.get("content", "")).strip() and str(b.get("content", "")).strip():
                    pairs += 1
                    yield where, {"query": a["content"].strip(), "pos": [b["content"].strip()], "neg": []}
        if not pairs:
            yield where, Skip("no non-empty user -> assistant turn pair")


def reading_comprehension(rows, fields, prompt: str = RC_PROMPT, **_) -> Out:
    for where, row in rows:
        bad, (context, question, answer) = _texts(row, ["context", "question", "answer"], fields)
        yield where, bad or {"query": f"{context}\n{prompt}{question}", "pos": [answer], "neg": []}


def claim_evidence(rows, fields, **_) -> Out:
    """SUPPORTS evidence -> pos, REFUTES evidence -> neg, grouped by claim (held in memory per claim)."""
    groups: OrderedDict[str, dict] = OrderedDict()
    for where, row in rows:
        bad, (claim, evidence) = _texts(row, ["claim", "evidence"], fields)
        if bad:
            yield where, bad
            continue
        label = _get(row, "label", fields, _stripped)
        if isinstance(label, Skip):
            yield where, label
            continue
        label = label.lower()
        if label not in ("supports", "refutes"):
            yield where, Skip(f"label {label!r} is neither SUPPORTS nor REFUTES")
            continue
        g = groups.setdefault(claim, {"where": where, "pos": [], "neg": []})
        g["pos" if label == "supports" else "neg"].append(evidence)
    yield from _grouped(groups, "claim")


def _grouped(groups, what) -> Out:
    for query, g in groups.items():
        if not g["pos"]:
            yield g["where"], Skip(f"{what} has no positive ({len(g['neg'])} negative(s) only)")
        else:
            yield g["where"], {"query": query, "pos": list(dict.fromkeys(g["pos"])), "neg": list(dict.fromkeys(g["neg"]))}


_YES = {"1", "yes", "true", "y", "t", "positive", "paraphrase"}
_NO = {"0", "no", "false", "n", "f", "negative"}
_NLI = {"entailment": 2, "neutral": 1, "contradiction": 0}


def _binary(value) -> int | Skip:
    key = str(value).strip().lower()
    if key in ("1.0",):
        key = "1"
    if key in ("0.0",):
        key = "0"
    if key in _YES:
        return 1
    if key in _NO:
        return 0
    return Skip(f"label {value!r} is not yes/no, true/false or 1/0")


def _nli(value) -> int | Skip:
    key = str(value).strip().lower()
    if key in _NLI:
        return _NLI[key]
    if key in ("0", "1", "2"):
        return int(key)
    return Skip(f"label {value!r} is not entailment / neutral / contradiction")


def _score(value) -> float | Skip:
    try:
        score = float(value)
    except (TypeError, ValueError):
        return Skip(f"score {value!r} is not a number")
    return score if score == score and abs(score) != float("inf") else Skip(f"score {value!r} is not finite")


def _sts(rows, fields, label_fn, role) -> Out:
    for where, row in rows:
        bad, (a, b) = _texts(row, ["text1", "text2"], fields)
        score = bad or _get(row, role, fields, label_fn)
        if isinstance(score, Skip):
            yield where, score
            continue
        yield where, {"text1": a, "text2": b, "score": score}
        yield where, {"text1": b, "text2": a, "score": score}  # QZhou adds every pair in both directions


def sts_score(rows, fields, **_) -> Out:
    return _sts(rows, fields, _score, "score")


def sts_binary(rows, fields, **_) -> Out:
    return _sts(rows, fields, _binary, "label")


def nli(rows, fields, **_) -> Out:
    return _sts(rows, fields, _nli, "label")


def nli_triplets(rows, fields, **_) -> Out:
    """premise -> entailment hypotheses as pos, contradictions as neg (neutral pairs are reported, not used)."""
    groups: OrderedDict[str, dict] = OrderedDict()
    for where, row in rows:
        bad, (p, h) = _texts(row, ["text1", "text2"], fields)
        label = bad or _get(row, "label", fields, _nli)
        if isinstance(label, Skip):
            yield where, label
            continue
        if label == 1:
            yield where, Skip("neutral pair: no role in a triplet")
            continue
        g = groups.setdefault(p, {"where": where, "pos": [], "neg": []})
        g["pos" if label == 2 else "neg"].append(h)
    for query, g in groups.items():
        if not g["pos"] or not g["neg"]:
            yield g["where"], Skip(f"premise lacks {'an entailment' if not g['pos'] else 'a contradiction'}")
        else:
            yield g["where"], {"query": query, "pos": g["pos"], "neg": g["neg"]}


def classification(rows, fields, negatives: int = 4, seed: int = 0, **_) -> Out:
    """query = text, pos = another text of its label, neg = `negatives` texts of other labels; class ids are the
    sorted label names' indices. Two passes over the texts (held in memory: classification sets are small)."""
    items: list[tuple[str, str, str]] = []
    for where, row in rows:
        text, label = _text(row, "text", fields), _get(row, "label", fields, _stripped)
        bad = _skip(text, label)
        if bad:
            yield where, bad
            continue
        if not label:
            yield where, Skip("label is empty")
            continue
        items.append((where, text, label))
    labels = sorted({label for _, _, label in items})
    ids = {label: i for i, label in enumerate(labels)}
    by_label: dict[str, list[str]] = defaultdict(list)
    for _, text, label in items:
        by_label[label].append(text)
    rng = random.Random(seed)
    for where, text, label in items:
        others = [t for t in by_label[label] if t != text]
        if not others:
            yield where, Skip(f"label {label!r} has no other text to be the positive")
            continue
        neg_labels = [lab for lab in labels if lab != label]
        if not neg_labels:
            yield where, Skip("only one label in the dataset: no negatives")
            continue
        chosen = [rng.choice(neg_labels) for _ in range(negatives)]
        yield where, {"query": text, "pos": [rng.choice(others)], "neg": [rng.choice(by_label[c]) for c in chosen],
                      "label": ids[label], "neg_labels": [ids[c] for c in chosen], "label_name": label}


def retrieval(rows, fields, **_) -> Out:
    """Already (query, pos[, neg]) rows under any field names; pos/neg may be a string or a list."""
    for where, row in rows:
        q, pos = _text(row, "query", fields), _get(row, "pos", fields)
        bad = _skip(q, pos)
        if bad:
            yield where, bad
            continue
        neg = row.get(fields.get("neg", "neg"), [])
        pos, neg = ([pos] if isinstance(pos, str) else pos), ([neg] if isinstance(neg, str) else neg)
        if not isinstance(pos, list) or not isinstance(neg, list):
            yield where, Skip("pos / neg must be a string or a list of strings")
            continue
        yield where, {"query": q, "pos": pos, "neg": neg}


CONVERTERS: dict[str, tuple[Callable[..., Out], tuple[str, ...]]] = {
    "title-body": (title_body, ("title", "body")),
    "title-abstract": (lambda rows, fields, **kw: title_body(rows, fields, body_role="abstract"), ("title", "abstract")),
    "qa": (qa, ("question", "answer", "label?")),
    "chat": (chat, ("messages",)),
    "reading-comprehension": (reading_comprehension, ("context", "question", "answer")),
    "claim-evidence": (claim_evidence, ("claim", "evidence", "label")),
    "sts-score": (sts_score, ("text1", "text2", "score")),
    "sts-binary": (sts_binary, ("text1", "text2", "label")),
    "nli": (nli, ("text1", "text2", "label")),
    "nli-triplets": (nli_triplets, ("text1", "text2", "label")),
    "classification": (classification, ("text", "label")),
    "retrieval": (retrieval, ("query", "pos", "neg?")),
}


def run_converter(kind: str, rows: Iterator[Row], fields: dict[str, str], **options) -> Out:
    if kind not in CONVERTERS:
        raise DataError(f"unknown converter {kind!r}; choose one of {', '.join(CONVERTERS)}")
    fn, roles = CONVERTERS[kind]
    known = {r.rstrip("?") for r in roles}
    unknown = set(fields) - known
    if unknown:
        raise DataError(f"--field {sorted(unknown)} is not a role of {kind}; its roles: {', '.join(sorted(known))}")
    return fn(rows, fields, **options)
