"""`qzhou` command line: parses arguments and calls the library; no logic lives here."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

#: feature modules that register their own sub-commands with `add_parser(subparsers)`
FEATURE_CLIS: tuple[str, ...] = ("qzhou.data.cli", "qzhou.training.cli", "qzhou.synthesis.cli", "qzhou.mining_cli",
                                  "qzhou.evaluation.cli")


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def cmd_convert(a: argparse.Namespace) -> None:
    from qzhou import Embedder

    e = Embedder.load(a.base, gguf_file=a.gguf_file, attention=a.attention, pooling=a.pooling,
                      max_length=a.max_length, dtype=a.dtype, device=a.device)
    out = e.save(a.out)
    print(f"saved {e.config.attention} {e.config.pooling}-pooling embedder ({e.hidden_size} dims) to {out}")


def cmd_encode(a: argparse.Namespace) -> None:
    from qzhou.corpus.cli import is_sharded_output

    if is_sharded_output(a.output):  # a folder: resumable parquet shards + manifest (qzhou.corpus)
        from qzhou.corpus.cli import run_sharded

        return run_sharded(a)
    from qzhou import Embedder
    from qzhou.textio import read_texts, write_embeddings

    texts = read_texts(a.input, a.field)
    e = Embedder.load(a.model, dtype=a.dtype, device=a.device)
    emb = e.encode(texts, prompt_name=a.prompt_name, instruction=a.instruction, dim=a.dim,
                   batch_tokens=a.batch_tokens, show_progress=not a.quiet)
    write_embeddings(a.output, emb, texts if Path(a.output).suffix == ".parquet" else None)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {a.output}", file=sys.stderr)


def cmd_info(a: argparse.Namespace) -> None:
    from qzhou import Embedder

    e = Embedder.load(a.model, dtype=a.dtype, device=a.device)
    info = e.info()
    if a.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return
    for k, v in info.items():
        print(f"{k:>15}: {v!r}" if isinstance(v, str) and "\n" in v else f"{k:>15}: {v}")


def cmd_quickstart(a: argparse.Namespace) -> None:
    from qzhou.quickstart import run

    run(Path(a.out), dtype=a.dtype, device=a.device, k=a.k, train=not a.no_train, overrides=a.set or [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qzhou", description="LLM text embedders, QZhou / Qwen3 style.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="an untrained embedder from a base LLM, saved in the sentence-transformers layout")
    p.add_argument("base", help="HF folder, hub id, or .gguf file")
    p.add_argument("out")
    p.add_argument("--attention", choices=["bidirectional", "causal"], default=None)
    p.add_argument("--pooling", choices=["mean", "last", "cls"], default=None)
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside BASE")
    p.add_argument("--max-length", type=int, default=None)
    _add_load_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("encode", help="embed texts from a .txt/.jsonl/.csv/.tsv/.parquet file")
    p.add_argument("model")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help=".npy or .parquet")
    p.add_argument("--field", default=None, help="column / JSON field holding the text (default: text)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt-name", choices=["query", "document"], default=None)
    g.add_argument("--instruction", default=None, help="task text put into the query template")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka: keep the first N dimensions")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--quiet", action="store_true")
    _add_load_args(p)
    importlib.import_module("qzhou.corpus.cli").add_sharded_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("info", help="architecture, attention, pooling, dimensions, max length, prompts")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    _add_load_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("quickstart", help="the main job: SmolLM2-135M made an embedder, evaluated, trained with "
                       "configs/quickstart-cpu.yaml, evaluated again and searched")
    p.add_argument("--out", default="out/quickstart")
    p.add_argument("-k", type=int, default=3, help="hits shown per query")
    p.add_argument("--no-train", action="store_true", help="only the untrained embedder (seconds, not minutes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the quickstart recipe")
    _add_load_args(p)
    p.set_defaults(dtype="float32")  # an untrained bidirectional conversion is fragile in bf16 (README, Speed)
    p.set_defaults(func=cmd_quickstart)
    for module in FEATURE_CLIS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # user errors get one line; a TrainingError (NaN loss, ...) is one too
        if not isinstance(e, (FileNotFoundError, ValueError, KeyError, TypeError)) and type(e).__name__ != "TrainingError":
            raise
        print(f"qzhou {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
