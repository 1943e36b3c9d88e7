"""`qzhou rerank` and `qzhou export-seq-cls`: parse arguments and call the library (`Reranker`, `export_seq_cls`).

    qzhou rerank MODEL --query "..." --input docs.jsonl --output ranked.jsonl [--top-k N] [--instruction TEXT]
    qzhou export-seq-cls RERANKER OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=int, default=None, help="prompt cap in tokens (default: the model's, else "
                   "8192); only the document is cut")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rerank", help="score documents against a query with an LLM reranker (Qwen3-Reranker format), best first",
        description="Rank the texts of --input by p(yes) for --query and write one JSON line per document, best "
                    "first: rank, index (row in the input), id (when the input has one), score = p(yes), logit = "
                    "log-odds, text.")
    p.add_argument("model", help="reranker folder, hub id, .gguf file, or 'default' (the bundled SmolLM2-135M)")
    p.add_argument("--query", required=True, help="the query the documents are judged against")
    p.add_argument("--input", required=True, help=".txt/.jsonl/.csv/.tsv/.parquet (or a folder of them)")
    p.add_argument("--output", required=True, help=".jsonl file; '-' prints to stdout")
    p.add_argument("--field", default=None, help="column / JSON field holding the text (default: text)")
    p.add_argument("--id-field", default=None, help="column / JSON field holding the id (default: id when present)")
    p.add_argument("--top-k", type=int, default=None, help="keep the best K documents (default: all)")
    p.add_argument("--instruction", default=None, help="the task, e.g. 'Given a question, retrieve answers'")
    p.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per forward (memory bound)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _load_args(p)
    p.set_defaults(func=cmd_rerank)

    p = subparsers.add_parser(
        "export-seq-cls", help="a *ForSequenceClassification copy of a reranker (one label: yes row - no row) plus "
                               "the prompt template vLLM's score API needs",
        description="Write OUT with one-label weights W[yes] - W[no] (sigmoid(logit) = p(yes)), the tokenizer and "
                    "qwen3_reranker.jinja; serve it with: vllm serve OUT --runner pooling "
                    "--chat-template OUT/qwen3_reranker.jinja")
    p.add_argument("model", help="reranker folder, hub id, .gguf file, or 'default'")
    p.add_argument("out", help="folder to write the seq-cls copy to")
    _load_args(p)
    p.set_defaults(func=cmd_export_seq_cls)


def cmd_rerank(a: argparse.Namespace) -> None:
    from qzhou import Reranker
    from qzhou.textio import read_inputs

    if not a.query.strip():
        raise ValueError("--query is empty")
    if a.top_k is not None and a.top_k < 1:
        raise ValueError(f"--top-k must be positive (got {a.top_k})")
    if a.output != "-" and Path(a.output).suffix.lower() != ".jsonl":
        raise ValueError(f"--output {a.output}: write a .jsonl file (or '-' for stdout)")
    inputs = read_inputs(a.input, a.field, a.id_field)
    r = Reranker.load(a.model, dtype=a.dtype, device=a.device, max_length=a.max_length)
    ranked = r.rank(a.query, inputs.texts, top_k=a.top_k, instruction=a.instruction, batch_tokens=a.batch_tokens,
                    show_progress=not a.quiet)
    rows = []
    for n, hit in enumerate(ranked, 1):
        row = {"rank": n, "index": hit["index"]}
        if inputs.ids is not None:
            row["id"] = inputs.ids[hit["index"]]
        row.update(score=hit["score"], logit=hit["logit"], text=inputs.texts[hit["index"]])
        rows.append(json.dumps(row, ensure_ascii=False, default=str))
    if a.output == "-":
        print("\n".join(rows))
        return
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"ranked {len(inputs.texts)} documents; wrote {len(rows)} to {a.output}", file=sys.stderr)


def cmd_export_seq_cls(a: argparse.Namespace) -> None:
    from qzhou import Reranker
    from qzhou.reranking.export import VLLM_TEMPLATE, export_seq_cls

    r = Reranker.load(a.model, dtype=a.dtype, device=a.device, max_length=a.max_length)
    out = export_seq_cls(r, a.out)
    print(f"wrote {out} ({type(r.model).__name__.replace('ForCausalLM', 'ForSequenceClassification')}, one label)\n"
          f"serve: vllm serve {out} --runner pooling --chat-template {out / VLLM_TEMPLATE}")


def cmd_convert_reranker(a: argparse.Namespace) -> None:
    """`qzhou convert BASE OUT --reranker`: a base decoder LLM as an (untrained) reranker, saved by `save`."""
    from qzhou import Reranker

    if a.attention or a.pooling:
        raise ValueError("--attention and --pooling are embedder settings; a --reranker keeps causal attention and "
                         "reads the last position")
    r = Reranker.load(a.base, gguf_file=a.gguf_file, max_length=a.max_length, dtype=a.dtype, device=a.device)
    out = r.save(a.out)
    print(f"saved {type(r.model).__name__} as a yes/no reranker (yes={r.yes_id}, no={r.no_id}, "
          f"max_length {r.max_length}) to {out}")
