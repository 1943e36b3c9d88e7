"""Hard-negative mining with a qzhou embedder: embed the corpus and the queries, search, take negatives from a
rank window (QZhou: ranks 10-30, after stella-large-zh-v3), and guard against false negatives.

Definitions (what the tests check against a brute-force ranking):
- rank: 1-based position of a corpus text in the query's ranking by cosine over the whole corpus (positives
  included, so `--ranks 10-30` means the 10th to the 30th best hits, as QZhou states it);
- a candidate in the window is dropped as `positive` (its normalised text equals a positive), `query` (equals
  the query), `existing` (already a negative of the record) or `margin` (score > weakest positive's score -
  margin: scoring that close to a positive suggests an unlabelled positive; a negative margin such as -0.1
  tolerates negatives slightly above the positive, like Qwen3's false-negative mask);
- the rest are kept best-ranked first, up to `num_negatives` (default: all of the window); `judge_window` holds
  these rules, for this module and for `qzhou.corpus` mining over shards.
The corpus is de-duplicated by normalised text first (a duplicate would give the same negative twice); without
a corpus, the distinct positives of the query file are the corpus (QZhou mined from the dataset's own pool).

Scores are cosines whether or not the model normalises its output: queries and documents are L2-normalised
here. Search: `exact` is `qzhou.search.top_k` (the package's one exact search; faiss IndexFlatIP for large
corpora when installed); `hnsw` and `ivf` are faiss's approximate indexes for corpora where exact search is too
slow (roughly above a million texts).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from qzhou.data.readers import DataError, JsonlWriter, read_rows
from qzhou.data.records import check_record, describe_errors, normalize_text
from qzhou.search import normalize, top_k

INDEXES = ("exact", "hnsw", "ivf")
FAISS_INSTALL = "pip install 'qzhou[mine]' (faiss-cpu)"


def load_embedder(model: Any, dtype: str = "float32", device: str | None = None):
    """A folder is loaded; an object with `encode` and `hidden_size` (an Embedder, or a stand-in) is used as is."""
    if hasattr(model, "encode") and hasattr(model, "hidden_size"):
        return model
    from qzhou import Embedder

    return Embedder.load(model, dtype=dtype, device=device)


def encode_queries(embedder, texts: list[str], instructions: list[str | None], default: str | None,
                   batch_tokens: int = 16384) -> np.ndarray:
    """Queries grouped by instruction (the record's own, else `default`, else the model's `query` prompt); rows
    L2-normalised, since every caller scores them by cosine and a model need not normalise."""
    out = np.zeros((len(texts), embedder.hidden_size), dtype=np.float32)  # (Q, D)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, ins in enumerate(instructions):
        groups[ins or default].append(i)
    for ins, idx in groups.items():
        kw = {"instruction": ins} if ins else {"prompt_name": "query"}
        out[idx] = embedder.encode([texts[i] for i in idx], batch_tokens=batch_tokens, show_progress=False, **kw)
    return normalize(out)


class Index:
    """Inner-product search over rows the caller has L2-normalised (= cosine): `exact` through `top_k`, or one
    of faiss's approximate indexes."""

    def __init__(self, vectors: np.ndarray, kind: str = "exact", hnsw_m: int = 32, nprobe: int = 32):
        if kind not in INDEXES:
            raise ValueError(f"--index must be one of {', '.join(INDEXES)} (got {kind!r})")
        self.kind, self.n = kind, vectors.shape[0]
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if kind == "exact":
            return
        try:
            import faiss
        except ImportError:
            raise ValueError(f"--index {kind} needs faiss: {FAISS_INSTALL}") from None
        d = vectors.shape[1]
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 200
        else:
            nlist = max(1, min(int(4 * np.sqrt(self.n)), self.n // 39))  # faiss wants >= 39 points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(self.vectors)
            index.nprobe = min(nlist, nprobe)
        index.add(self.vectors)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) -> (Q, k) scores and corpus indices, best first (-1 where fewer than k were found)."""
        k = min(k, self.n)
        if self.kind == "exact":
            return top_k(queries, self.vectors, k, metric="dot")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(128, 2 * k)
        return self.index.search(queries, k)


def parse_ranks(text: str) -> tuple[int, int]:
    lo, sep, hi = str(text).partition("-")
    try:
        lo_i, hi_i = int(lo), int(hi if sep else lo)
    except ValueError:
        raise ValueError(f"--ranks takes FIRST-LAST, e.g. 10-30 (got {text!r})") from None
    if not 1 <= lo_i <= hi_i:
        raise ValueError(f"--ranks needs 1 <= FIRST <= LAST (got {text!r})")
    return lo_i, hi_i


def read_queries(path) -> list[tuple[str, dict]]:
    """(where, record) of every retrieval record in `path`; any other record is an error naming its line."""
    rows = []
    for where, record in read_rows(path):
        task, errors, _ = check_record(record)
        if errors:
            raise DataError(f"{where}: " + describe_errors(errors))
        if task != "retrieval":
            raise DataError(f"{where}: mining needs retrieval records (query, pos[, neg]); this is a {task} record")
        rows.append((where, record))
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def judge_window(record: dict, pos_score: float, scores: np.ndarray, idx: np.ndarray,
                 texts: Sequence[str] | Mapping[int, str], ranks: tuple[int, int], margin: float,
                 num_negatives: int | None, stats: Counter,
                 ids: Sequence[str] | Mapping[int, str] | None = None) -> tuple[list[dict], list[dict]]:
    """One query's rank window by the rules in the module docstring: (kept, dropped) items {rank, score, [id],
    text[, reason]}. `scores`, `idx`: its hits best first (-1: no hit); `texts[j]` (and `ids[j]`) name hit j
    (a list over the corpus, or a dict holding only the hits, as `qzhou.corpus.mine` fetches them).
    A text equal to one already kept is dropped as `duplicate` (only a corpus not de-duplicated has them)."""
    pos_keys = {normalize_text(p) for p in record["pos"]}
    neg_keys = {normalize_text(t) for t in record.get("neg", [])}
    query_key = normalize_text(record["query"])
    kept, dropped, taken = [], [], set()
    for rank in range(ranks[0], min(ranks[1], len(idx)) + 1):
        j, s = int(idx[rank - 1]), float(scores[rank - 1])
        if j < 0:
            break
        key = normalize_text(texts[j])
        reason = ("positive" if key in pos_keys else "query" if key == query_key else
                  "existing" if key in neg_keys else "duplicate" if key in taken else
                  "margin" if s > pos_score - margin else None)
        item = {"rank": rank, "score": round(s, 4), **({"id": ids[j]} if ids is not None else {}), "text": texts[j]}
        if reason:
            stats[reason] += 1
            dropped.append({**item, "reason": reason})
        elif num_negatives is None or len(kept) < num_negatives:
            kept.append(item)
            taken.add(key)
    return kept, dropped


class MinedWriter:
    """OUTPUT (each record with its kept negatives appended) and OUTPUT.report.jsonl (per query: the positive's
    score, what was kept and every dropped candidate with its rank, score and reason), for both mining paths."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.report_path = self.output.with_name(self.output.name + ".report.jsonl")
        self.added: list[int] = []  # negatives added, per query

    def __enter__(self) -> MinedWriter:
        with ExitStack() as stack:
            self._out = stack.enter_context(JsonlWriter(self.output))
            self._report = stack.enter_context(JsonlWriter(self.report_path))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def write(self, where: str, record: dict, pos_score: float, kept: list[dict], dropped: list[dict]) -> None:
        self._out.write({**record, "neg": list(record.get("neg", [])) + [k["text"] for k in kept]})
        self.added.append(len(kept))
        self._report.write({"source": where, "query": record["query"], "pos_score": round(pos_score, 4),
                            "added": len(kept), "kept": kept, "dropped": dropped})

    def counts(self, stats: Counter) -> dict:
        """The summary's figures on what was added and dropped."""
        added = np.asarray(self.added)
        return {"negatives_added": int(added.sum()),
                "negatives_per_query": {"mean": round(float(added.mean()), 2), "min": int(added.min()),
                                        "max": int(added.max())},
                "queries_without_new_negatives": int((added == 0).sum()), "dropped": dict(stats)}


def _read_corpus(path, field: str, queries) -> tuple[list[str], int]:
    texts, seen, duplicates = [], set(), 0
    if path is None:
        source = (("", {field: p}) for _, r in queries for p in r["pos"])
    else:
        source = read_rows(path)
    for where, row in source:
        text = row.get(field) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {field!r} must hold the document text (got {text!r:.60}); "
                            "pick the field with --corpus-field")
        key = normalize_text(text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        texts.append(text)
    if not texts:
        raise DataError(f"{path}: an empty corpus")
    return texts, duplicates


def mine(queries: str | Path, output: str | Path, model: Any, *, corpus: str | Path | None = None,
         corpus_field: str = "text", index: str = "exact", ranks: tuple[int, int] = (10, 30), margin: float = 0.05,
         num_negatives: int | None = None, instruction: str | None = None, batch_tokens: int = 16384,
         chunk: int = 1024, dtype: str = "float32", device: str | None = None, progress: bool = True) -> dict:
    """Write `output` (the records with mined negatives added) and OUTPUT.report.jsonl (per query: the
    positive's score, what was kept and every dropped candidate with its rank, score and reason)."""
    from tqdm import tqdm

    started = time.perf_counter()
    lo, hi = ranks
    output = Path(output)
    rows = read_queries(queries)
    docs, corpus_dups = _read_corpus(corpus, corpus_field, rows)
    embedder = load_embedder(model, dtype, device)
    doc_emb = normalize(embedder.encode(docs, prompt_name="document", batch_tokens=batch_tokens,
                                        show_progress=progress))
    doc_keys = [normalize_text(t) for t in docs]
    position = {k: i for i, k in enumerate(doc_keys)}
    missing = sorted({p for _, r in rows for p in r["pos"] if normalize_text(p) not in position})
    extra = normalize(embedder.encode(missing, prompt_name="document", batch_tokens=batch_tokens,
                                      show_progress=False)) if missing else None
    pos_vec = {normalize_text(p): extra[i] for i, p in enumerate(missing)}
    search = Index(doc_emb, index)
    stats: Counter = Counter()
    bar = tqdm(total=len(rows), desc="mine", unit="query", disable=not progress)
    with MinedWriter(output) as out:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            q = encode_queries(embedder, [r["query"] for _, r in part], [r.get("instruction") for _, r in part],
                               instruction, batch_tokens)  # (C, D)
            scores, idx = search.search(q, hi)  # (C, hi)
            for (where, record), qv, sc, ix in zip(part, q, scores, idx):
                pos_keys = {normalize_text(p) for p in record["pos"]}
                pos_score = min(float(qv @ (doc_emb[position[k]] if k in position else pos_vec[k])) for k in pos_keys)
                kept, dropped = judge_window(record, pos_score, sc, ix, docs, ranks, margin, num_negatives, stats)
                out.write(where, record, pos_score, kept, dropped)
            bar.update(len(part))
    bar.close()
    return {"queries": len(rows), "corpus": len(docs), "corpus_duplicates_dropped": corpus_dups, "index": index,
            "ranks": f"{lo}-{hi}", "margin": margin, **out.counts(stats),
            "output": str(output), "report": str(out.report_path), "seconds": round(time.perf_counter() - started, 2)}
