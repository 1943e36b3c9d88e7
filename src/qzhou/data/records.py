"""The record schema every stage reads and writes (one JSON object per line):

retrieval       {"query": str, "pos": [str, ...], "neg": [str, ...], "instruction"?: str}
sts             {"text1": str, "text2": str, "score": float, "instruction"?: str}
classification  {"text": str, "label": str|int, "instruction"?: str}                      (a source dataset)
                {"query": str, "pos": [str], "neg": [str, ...], "label": int, "neg_labels": [int, ...]}
                                                        (training form, made by `data convert --from classification`)

A dataset is one file (or folder) of one task type, declared in a manifest (see `manifest.py`).
`check_record` returns the problems of one record; a record with errors is unusable, warnings are reported.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Literal

Task = Literal["retrieval", "sts", "classification"]
TASKS: tuple[str, ...] = ("retrieval", "sts", "classification")
OPTIONAL = {"instruction", "id", "source"}


def task_of(record: dict[str, Any]) -> Task | None:
    """The task a record's fields imply (None when they match no schema)."""
    if "query" in record and "pos" in record:
        return "classification" if "label" in record else "retrieval"
    if "text1" in record and "text2" in record:
        return "sts"
    if "text" in record and "label" in record:
        return "classification"
    return None


def texts_of(record: dict[str, Any]) -> list[str]:
    """Every text of a record, in a fixed order (query/text first)."""
    out = []
    for key in ("query", "text", "text1", "text2"):
        if isinstance(record.get(key), str):
            out.append(record[key])
    for key in ("pos", "neg"):
        if isinstance(record.get(key), list):
            out.extend(t for t in record[key] if isinstance(t, str))
    return out


def normalize_text(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: the key used for duplicates and decontamination."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def _text(record, field, errors) -> str | None:
    value = record.get(field)
    if value is None:
        errors.append((field, "missing"))
    elif not isinstance(value, str):
        errors.append((field, f"is {type(value).__name__}, not a string"))
    elif not value.strip():
        errors.append((field, "is empty"))
    else:
        return value
    return None


def _texts(record, field, errors, min_items) -> list[str]:
    value = record.get(field, [] if min_items == 0 else None)
    if value is None:
        errors.append((field, "missing"))
        return []
    if not isinstance(value, list):
        errors.append((field, f"is {type(value).__name__}, not a list of strings"))
        return []
    if len(value) < min_items:
        errors.append((field, f"needs at least {min_items} text(s)"))
    for i, t in enumerate(value):
        if not isinstance(t, str):
            errors.append((f"{field}[{i}]", f"is {type(t).__name__}, not a string"))
        elif not t.strip():
            errors.append((f"{field}[{i}]", "is empty"))
    return [t for t in value if isinstance(t, str)]


def describe_errors(errors: list[tuple[str | None, str]]) -> str:
    """`check_record`'s errors as one line: "field message; field message" (a whole-record error says "record")."""
    return "; ".join(f"{field or 'record'} {message}" for field, message in errors)


def check_record(record: Any, task: Task | None = None, max_chars: int | None = None):
    """-> (task, errors, warnings); each problem is (field, message)."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    if not isinstance(record, dict):
        return task, [("", f"is {type(record).__name__}, not a JSON object")], warnings
    found = task_of(record)
    task = task or found
    if task is None:
        return None, [("", f"fields {sorted(record)} match no record schema (retrieval, sts, classification)")], warnings
    if found is not None and found != task:
        errors.append(("", f"fields {sorted(record)} are a {found} record, but the dataset is {task}"))
        return task, errors, warnings
    if task == "sts":
        _text(record, "text1", errors)
        _text(record, "text2", errors)
        score = record.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            errors.append(("score", f"must be a finite number (got {score!r})"))
    elif "text" in record:  # classification source form
        _text(record, "text", errors)
        if not isinstance(record.get("label"), (str, int)) or isinstance(record.get("label"), bool):
            errors.append(("label", f"must be a string or an integer (got {record.get('label')!r})"))
    else:
        query = _text(record, "query", errors)
        pos = _texts(record, "pos", errors, 1)
        neg = _texts(record, "neg", errors, 0)
        keys_pos = {normalize_text(t) for t in pos}
        for i, t in enumerate(neg):
            if normalize_text(t) in keys_pos:
                errors.append((f"neg[{i}]", "equals a positive"))
        if query is not None and normalize_text(query) in keys_pos:
            warnings.append(("pos", "equals the query"))
        if task == "classification":
            if not isinstance(record.get("label"), int) or isinstance(record.get("label"), bool):
                errors.append(("label", "must be the integer class id"))
            nl = record.get("neg_labels")
            if not isinstance(nl, list) or len(nl) != len(neg) or not all(isinstance(x, int) for x in nl):
                errors.append(("neg_labels", "must list one integer class id per negative"))
            elif record.get("label") in nl:
                errors.append(("neg_labels", "a negative has the anchor's own class"))
    if "instruction" in record and not isinstance(record["instruction"], str):
        errors.append(("instruction", "must be a string"))
    if max_chars:
        for key, value in record.items():
            items = value if isinstance(value, list) else [value]
            if any(isinstance(t, str) and len(t) > max_chars for t in items):
                warnings.append((key, f"longer than {max_chars} characters"))
    return task, errors, warnings
