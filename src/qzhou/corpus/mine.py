"""`qzhou mine --corpus-embeddings DIR/`: hard negatives from an encoded corpus, without holding it in memory.

Same rules as `qzhou.mining.mine` (rank window over the whole corpus, positives / the query / existing negatives
dropped, the margin guard against unlabelled positives), in three passes that each stay small:
1. search: queries embedded and searched in batches of `chunk`; only the (Q, LAST) rows and scores are kept;
2. texts: the input files named in the manifest are streamed once and only the rows inside some query's window
   are kept (the corpus is never loaded as Python strings);
3. filter and write: per query, the window's candidates go through `qzhou.mining.judge_window` (the one copy of
   the rules); a candidate whose normalised text equals one already taken for that query is dropped as
   `duplicate` (the folder is not de-duplicated the way `mine` de-duplicates an in-memory corpus).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qzhou.corpus import manifest as mf
from qzhou.corpus.index import ShardIndex, choose_index
from qzhou.corpus.inputs import iter_file_rows
from qzhou.data.records import normalize_text
from qzhou.mining import MinedWriter, encode_queries, judge_window, load_embedder, read_queries
from qzhou.search import normalize


def open_folder(folder: Path) -> dict:
    """The manifest of a finished embeddings folder (errors say how to finish or make one)."""
    man = mf.read_manifest(folder)
    if man is None:
        raise FileNotFoundError(f"{folder}/manifest.json: no such file; make the folder with "
                                "`qzhou encode MODEL --input CORPUS --output DIR/`")
    if not man.get("complete"):
        raise ValueError(f"{folder}: {man.get('shards_done')} of {len(man['shards'])} shards are encoded; rerun "
                         "the same `qzhou encode` command to finish (it resumes)")
    return man


def check_model(embedder, man: dict, folder: Path) -> None:
    have = mf.fingerprint(embedder)
    want = man["model"]["fingerprint"]
    if have != want:
        raise ValueError(f"{folder}/manifest.json: the corpus was embedded by another model (fingerprint {want} in "
                         f"the folder vs {have} for --model {man['model'].get('source')!r} as loaded); mine with "
                         "the model that encoded it, or re-encode the corpus")


def fetch_texts(man: dict, wanted: set[int]) -> tuple[dict[int, str], dict[int, str]]:
    """({global row: id}, {global row: text}) for the `wanted` rows, streaming each input file once."""
    ids: dict[int, str] = {}
    texts: dict[int, str] = {}
    files = {f["rel"]: f for f in man["input"]["files"]}
    offset, ranges = 0, []
    for s in man["shards"]:
        ranges.append((s["file"], s["start"], offset))
        offset += s["end"] - s["start"]
    by_file: dict[str, dict[int, int]] = {}  # file -> {row in file: global row}
    starts = sorted(ranges, key=lambda r: r[2])
    bounds = np.array([r[2] for r in starts])
    for g in sorted(wanted):
        file, start, first = starts[int(np.searchsorted(bounds, g, side="right")) - 1]
        by_file.setdefault(file, {})[start + g - first] = g
    for rel, rows in by_file.items():
        f = files[rel]
        if not Path(f["path"]).is_file():
            raise FileNotFoundError(f"{f['path']}: the corpus input named in the manifest is gone; mining needs it "
                                    "for the negatives' texts")
        last = max(rows)
        for i, (rid, text) in enumerate(iter_file_rows(Path(f["path"]), man["input"]["field"],
                                                       man["input"]["id_field"], rel)):
            if i in rows:
                ids[rows[i]], texts[rows[i]] = rid, text
            if i >= last:
                break
    return ids, texts


def _search_all(embedder, index: ShardIndex, rows, instruction, hi: int, dim: int, chunk: int, batch_tokens: int,
                progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries embedded and searched in batches: (Q, D) query vectors, (Q, k) scores and global rows."""
    qs, scores, idx = [], [], []
    for start in tqdm(range(0, len(rows), chunk), desc="search", unit="batch", disable=not progress):
        part = rows[start:start + chunk]
        q = encode_queries(embedder, [r["query"] for _, r in part], [r.get("instruction") for _, r in part],
                           instruction, batch_tokens)[:, :dim]  # (C, D)
        q = normalize(q)
        s, i = index.search(q, hi)
        qs.append(q)
        scores.append(s)
        idx.append(i)
    return np.concatenate(qs), np.concatenate(scores), np.concatenate(idx)


def mine_corpus(queries: str | Path, output: str | Path, model: Any, corpus_embeddings: str | Path, *,
                index: str = "auto", ranks: tuple[int, int] = (10, 30), margin: float = 0.05,
                num_negatives: int | None = None, instruction: str | None = None, batch_tokens: int = 16384,
                chunk: int = 4096, dtype: str = "float32", device: str | None = None, recall_queries: int = 256,
                progress: bool = True) -> dict:
    """Write OUTPUT (records + mined negatives) and OUTPUT.report.jsonl, as `qzhou.mining.mine` does."""
    started = time.perf_counter()
    folder, output, (lo, hi) = Path(corpus_embeddings), Path(output), ranks
    man = open_folder(folder)
    rows = read_queries(queries)
    embedder = load_embedder(model, dtype, device)
    check_model(embedder, man, folder)
    n, dim = sum(s["end"] - s["start"] for s in man["shards"]), man["dimension"]
    kind = choose_index(n, index)
    search = ShardIndex(folder, [s["name"] for s in man["shards"]], n, dim, kind, progress=progress)
    built = time.perf_counter()
    q, scores, idx = _search_all(embedder, search, rows, instruction, hi, dim, chunk, batch_tokens, progress)
    searched = time.perf_counter()
    recall = search.recall_at_k(q[:recall_queries], 100)
    hit_ids, hit_texts = fetch_texts(man, {int(j) for j in idx[:, lo - 1:hi].reshape(-1) if j >= 0})
    pos_texts = sorted({p for _, r in rows for p in r["pos"]})
    p = man["prompt"]
    pos_emb = normalize(embedder.encode(pos_texts, prompt_name=p["prompt_name"], instruction=p["instruction"],
                                        dim=dim, batch_tokens=batch_tokens, show_progress=False))
    pos_vecs = {normalize_text(t): v for t, v in zip(pos_texts, pos_emb)}
    stats: Counter = Counter()
    with MinedWriter(output) as out:
        for (where, record), qv, sc, ix in zip(rows, q, scores, idx):
            pos_score = min(float(qv @ pos_vecs[normalize_text(p)]) for p in record["pos"])
            kept, dropped = judge_window(record, pos_score, sc, ix, hit_texts, ranks, margin, num_negatives, stats,
                                         hit_ids)
            out.write(where, record, pos_score, kept, dropped)
    return {"queries": len(rows), "corpus": n, "corpus_embeddings": str(folder), "index": kind,
            f"recall@100_vs_exact_on_{min(len(rows), recall_queries)}_queries": recall,
            "ranks": f"{lo}-{hi}", "margin": margin, **out.counts(stats),
            "output": str(output), "report": str(out.report_path), "index_seconds": round(built - started, 2),
            "search_seconds": round(searched - built, 2), "seconds": round(time.perf_counter() - started, 2)}
