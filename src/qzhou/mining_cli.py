"""`qzhou mine`: argument parsing only (the logic is `qzhou.mining.mine`)."""

from __future__ import annotations

import argparse
import json


def cmd_mine(a: argparse.Namespace) -> None:
    from qzhou.mining import mine, parse_ranks

    summary = mine(a.queries, a.output, a.model, corpus=a.corpus, corpus_field=a.corpus_field, index=a.index,
                   ranks=parse_ranks(a.ranks), margin=a.margin, num_negatives=a.num_negatives,
                   instruction=a.instruction, batch_tokens=a.batch_tokens, dtype=a.dtype, device=a.device,
                   progress=not a.quiet)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def add_parser(sub) -> None:
    from qzhou.mining import INDEXES

    p = sub.add_parser("mine", help="hard negatives from a rank window of an embedder's search, with a "
                                    "false-negative guard")
    p.add_argument("--model", required=True, help="a qzhou / sentence-transformers embedder folder")
    p.add_argument("--queries", required=True, help="retrieval records (query, pos[, neg]) .jsonl")
    p.add_argument("--corpus", default=None, help="documents (.jsonl/.csv/.parquet with a text field; "
                                                  "default: the distinct positives of --queries)")
    p.add_argument("--corpus-field", default="text", help="the corpus field holding the text (default: text)")
    p.add_argument("--output", required=True, help="the records with mined negatives (+ OUTPUT.report.jsonl)")
    p.add_argument("--index", choices=list(INDEXES), default="exact",
                   help="exact (faiss flat / numpy), or faiss hnsw / ivf for large corpora")
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
