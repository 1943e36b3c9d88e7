"""`qzhou mine`: argument parsing only (the logic is `qzhou.mining.mine`, or `qzhou.corpus.mine.mine_corpus` for
an encoded corpus folder)."""

from __future__ import annotations

import argparse
import json


def cmd_mine(a: argparse.Namespace) -> None:
    from qzhou.mining import INDEXES, mine, parse_ranks

    if a.corpus_embeddings:
        from qzhou.corpus.mine import mine_corpus

        if a.corpus:
            raise ValueError("give --corpus (texts, embedded now) or --corpus-embeddings (an encoded folder), not both")
        summary = mine_corpus(a.queries, a.output, a.model, a.corpus_embeddings, index=a.index or "auto",
                              ranks=parse_ranks(a.ranks), margin=a.margin, num_negatives=a.num_negatives,
                              instruction=a.instruction, batch_tokens=a.batch_tokens, dtype=a.dtype,
                              device=a.device, progress=not a.quiet)
    else:
        if a.index not in (None, *INDEXES):
            raise ValueError(f"--index {a.index} applies to --corpus-embeddings folders; with --corpus use "
                             f"{', '.join(INDEXES)}")
        summary = mine(a.queries, a.output, a.model, corpus=a.corpus, corpus_field=a.corpus_field,
                       index=a.index or "exact", ranks=parse_ranks(a.ranks), margin=a.margin,
                       num_negatives=a.num_negatives, instruction=a.instruction, batch_tokens=a.batch_tokens,
                       dtype=a.dtype, device=a.device, progress=not a.quiet)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def add_parser(sub) -> None:
    from qzhou.corpus.index import INDEX_KINDS
    from qzhou.mining import INDEXES

    p = sub.add_parser("mine", help="hard negatives from a rank window of an embedder's search, with a "
                                    "false-negative guard")
    p.add_argument("--model", required=True, help="a qzhou / sentence-transformers embedder folder")
    p.add_argument("--queries", required=True, help="retrieval records (query, pos[, neg]) .jsonl")
    p.add_argument("--corpus", default=None, help="documents (.jsonl/.csv/.parquet with a text field; "
                                                  "default: the distinct positives of --queries)")
    p.add_argument("--corpus-embeddings", default=None, metavar="DIR/",
                   help="a folder written by `qzhou encode MODEL --input CORPUS --output DIR/` (same model): "
                        "searched shard by shard, never loaded whole")
    p.add_argument("--corpus-field", default="text", help="the corpus field holding the text (default: text)")
    p.add_argument("--output", required=True, help="the records with mined negatives (+ OUTPUT.report.jsonl)")
    p.add_argument("--index", choices=sorted(set(INDEXES) | set(INDEX_KINDS)), default=None,
                   help="--corpus: exact (default), hnsw or ivf; --corpus-embeddings: auto (default: exact up to 1M "
                        "rows, hnsw to 10M, ivfpq above; recall@100 vs exact is reported), exact, hnsw, ivfpq")
    p.add_argument("--ranks", default="10-30", help="1-based rank window FIRST-LAST (QZhou: 10-30)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="drop candidates scoring above (weakest positive - MARGIN): likely false negatives")
    p.add_argument("--num-negatives", type=int, default=None, help="at most this many per query (best-ranked)")
    p.add_argument("--instruction", default=None, help="query instruction when a record has none "
                                                       "(default: the model's query prompt)")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_mine)
