"""Drop synthesized (query, positive) pairs that a qzhou embedder scores below a threshold (Qwen3 kept
cosine > 0.7; QZhou filtered with gte-Qwen2-7B-instruct, threshold undisclosed).

A retrieval record keeps the positives scoring >= threshold and is dropped when none is left. Other records
(STS, classification) carry no query-positive pair to score and pass through unchanged (counted). Dropped
records go to OUTPUT.dropped.jsonl with their scores, so the threshold can be judged by reading them.
Queries get the record's own `instruction`, else `instruction`, else the model's `query` prompt; positives
are embedded raw, as documents are. The score is the cosine whether or not the model normalises its output
(both sides are L2-normalised here), so a threshold means the same for every model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qzhou.data.readers import DataError, JsonlWriter, read_rows
from qzhou.data.records import check_record, describe_errors
from qzhou.search import normalize


def _chunks(path, size):
    chunk = []
    for where, record in read_rows(path):
        chunk.append((where, record))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def filter_pairs(input: str | Path, output: str | Path, model: Any, *, threshold: float = 0.7,
                 instruction: str | None = None, batch_tokens: int = 16384, chunk: int = 4096,
                 progress: bool = True) -> dict[str, Any]:
    """Stream `input` in chunks; `model` is an Embedder or a folder to load. Returns the summary."""
    from tqdm import tqdm

    from qzhou.mining import encode_queries, load_embedder

    embedder = load_embedder(model)
    output = Path(output)
    counts = {"records": 0, "kept": 0, "dropped": 0, "positives_dropped": 0, "passed_unscored": 0}
    scores_all: list[float] = []
    bar = tqdm(desc="filter", unit="rec", disable=not progress)
    with JsonlWriter(output) as out, JsonlWriter(output.with_name(output.name + ".dropped.jsonl")) as dropped:
        for rows in _chunks(input, chunk):
            pairs = []  # (row index, positive index)
            for i, (where, record) in enumerate(rows):
                task, errors, _ = check_record(record)
                if errors:
                    raise DataError(f"{where}: " + describe_errors(errors))
                if task == "retrieval":
                    pairs.extend((i, j) for j in range(len(record["pos"])))
            q = encode_queries(embedder, [rows[i][1]["query"] for i, _ in pairs],
                               [rows[i][1].get("instruction") for i, _ in pairs], instruction, batch_tokens)
            d = embedder.encode([rows[i][1]["pos"][j] for i, j in pairs], prompt_name="document",
                                batch_tokens=batch_tokens, show_progress=False) if pairs else np.zeros((0, 1))
            scores = (q * normalize(d)).sum(axis=1) if pairs else np.zeros(0)  # (P,) cosine: q is unit-length
            by_row: dict[int, list[tuple[int, float]]] = {}
            for (i, j), s in zip(pairs, scores.tolist()):
                by_row.setdefault(i, []).append((j, s))
                scores_all.append(s)
            for i, (where, record) in enumerate(rows):
                counts["records"] += 1
                if i not in by_row:
                    counts["passed_unscored"] += 1
                    out.write(record)
                    continue
                keep = [j for j, s in by_row[i] if s >= threshold]
                counts["positives_dropped"] += len(by_row[i]) - len(keep)
                if not keep:
                    counts["dropped"] += 1
                    dropped.write({"source": where, "scores": [round(s, 4) for _, s in by_row[i]], "record": record})
                    continue
                counts["kept"] += 1
                out.write({**record, "pos": [record["pos"][j] for j in keep]} if len(keep) < len(by_row[i])
                          else record)
            bar.update(len(rows))
    bar.close()
    s = np.asarray(scores_all)
    quantiles = {f"p{int(p * 100)}": round(float(np.quantile(s, p)), 4) for p in (0.1, 0.5, 0.9)} if s.size else {}
    return {"input": str(input), "output": str(output), "threshold": threshold, **counts,
            "dropped_file": str(output.with_name(output.name + ".dropped.jsonl")), "score_quantiles": quantiles}
