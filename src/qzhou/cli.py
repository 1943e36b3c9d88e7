"""`qzhou` command line: parses arguments and calls the library; no logic lives here."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless the text already gives it, or there is none to show);
    descriptions and epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "default:" in text or action.default in (None, False, argparse.SUPPRESS)
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose sub-parsers (any depth, any feature module) all use `HelpFormatter`."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


#: feature modules that register their own sub-commands with `add_parser(subparsers)`
FEATURE_CLIS: tuple[str, ...] = ("qzhou.data.cli", "qzhou.training.cli", "qzhou.synthesis.cli", "qzhou.mining_cli",
                                  "qzhou.evaluation.cli", "qzhou.merging.cli", "qzhou.serving.cli",
                                  "qzhou.reranking.cli")


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights' dtype; auto: bfloat16 on GPUs and CPUs with native bf16, else float32")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def cmd_convert(a: argparse.Namespace) -> None:
    if a.reranker:  # a yes/no reranker instead of an embedder (qzhou.reranking)
        from qzhou.reranking.cli import cmd_convert_reranker

        return cmd_convert_reranker(a)
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
    from qzhou.textio import WRITABLE, read_inputs, write_embeddings

    if Path(a.output).suffix.lower() not in WRITABLE:
        raise ValueError(f"--output {a.output}: use a .npy or .parquet file, or a folder ending in / for shards")
    inputs = read_inputs(a.input, a.field, a.id_field)  # bad or empty input fails before the model loads
    check_dim(a.model, a.dim)
    from qzhou import Embedder

    e = Embedder.load(a.model, dtype=a.dtype, device=a.device)
    emb = e.encode(inputs.texts, prompt_name=a.prompt_name, instruction=a.instruction, dim=a.dim,
                   batch_tokens=a.batch_tokens, show_progress=not a.quiet)
    parquet = Path(a.output).suffix.lower() == ".parquet"
    write_embeddings(a.output, emb, inputs.texts if parquet else None, inputs.ids if parquet else None)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {a.output}"
          + (f" (ids from field {inputs.id_field!r})" if parquet and inputs.ids else ""), file=sys.stderr)
    truncated = e.last_stats["truncated"]  # counted by encode's own tokenizer pass
    if truncated:
        print(f"warning: {truncated} of {len(inputs.texts)} texts were longer than the model's "
              f"{e.config.max_length} tokens and were truncated", file=sys.stderr)


def check_dim(model: str, dim: int | None) -> None:
    """`--dim` against the model's hidden size, read from its config file (before the slow model load)."""
    if dim is None:
        return
    from qzhou.modeling.loading import read_raw_config, resolve_source

    folder, gguf_file = resolve_source(model)
    raw = read_raw_config(folder, gguf_file)
    hidden = raw.get("hidden_size") or raw.get("d_model") or (raw.get("text_config") or {}).get("hidden_size")
    if dim < 1 or (hidden and dim > hidden):
        raise ValueError(f"--dim {dim}: must be between 1 and the model's hidden size {hidden or '?'}")


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

    run(Path(a.out), dtype=a.dtype, device=a.device, k=a.k, train=not a.no_train, overrides=a.set or [],
        threads=a.threads, reranker=not a.no_reranker, reranker_overrides=a.reranker_set or [])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="qzhou", description="LLM text embedders, QZhou / Qwen3 style.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="an untrained embedder from a base LLM, saved in the sentence-transformers layout")
    p.add_argument("base", help="HF folder, hub id, .gguf file, or 'default' (the bundled SmolLM2-135M)")
    p.add_argument("out", help="folder to write the embedder to (sentence-transformers layout)")
    p.add_argument("--attention", choices=["bidirectional", "causal"], default=None,
                   help="attention of the embedder (default: what the model's files imply; causal for a plain LLM)")
    p.add_argument("--pooling", choices=["mean", "last", "cls"], default=None,
                   help="how token states become one vector (default: what the model's files imply; last for an LLM)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside BASE, when BASE is a folder of them")
    p.add_argument("--max-length", type=int, default=None,
                   help="longest input in tokens; longer texts are truncated (default: the model's, at most 8192)")
    p.add_argument("--reranker", action="store_true",
                   help="save a Qwen3-Reranker-format yes/no reranker instead (CrossEncoder layout; "
                        "--attention/--pooling do not apply)")
    _add_load_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("encode", help="embed texts from a .txt/.jsonl/.csv/.tsv/.parquet file (or a folder of them)")
    p.add_argument("model", help="model folder, hub id, .gguf file, or 'default' (the bundled SmolLM2-135M)")
    p.add_argument("--input", required=True, help="a .txt (one text per line), .jsonl, .csv, .tsv or .parquet "
                   "file, or a folder: its readable files in sorted order")
    p.add_argument("--output", required=True, help=".npy (the vectors), .parquet (id, text, embedding), "
                   "or a folder DIR/ (parquet shards, see below)")
    p.add_argument("--field", default=None, help="column / JSON field holding the text (default: text)")
    p.add_argument("--id-field", default=None, help="column / JSON field holding each row's id, kept in the "
                   "parquet output (default: id, when the first row has one; FILE:ROW ids for --output DIR/)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt-name", choices=["query", "document"], default=None,
                   help="query: wrap texts in the query template with the default task; document: as given "
                        "(default: as given)")
    g.add_argument("--instruction", default=None, help="task text put into the query template")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka: keep the first N dimensions (default: all)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per forward (memory bound)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_load_args(p)
    importlib.import_module("qzhou.corpus.cli").add_sharded_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("info", help="architecture, attention, pooling, dimensions, max length, prompts")
    p.add_argument("model", help="model folder, hub id, .gguf file, or 'default' (the bundled SmolLM2-135M)")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    _add_load_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("quickstart", help="the main job: SmolLM2-135M made an embedder, evaluated, trained with "
                       "configs/quickstart-cpu.yaml, evaluated again and searched")
    p.add_argument("--out", default="out/quickstart", help="folder for the report, the picture and the model")
    p.add_argument("-k", type=int, default=3, help="hits shown per query")
    p.add_argument("--no-train", action="store_true", help="only the untrained embedder (seconds, not minutes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the quickstart recipe")
    p.add_argument("--no-reranker", action="store_true",
                   help="skip the reranker step (training a yes/no reranker on the sample data and reranking the "
                        "trained embedder's top 10; about 2 minutes on 2 idle cores); --no-train skips it too")
    p.add_argument("--reranker-set", action="append", metavar="KEY=VALUE",
                   help="override a value of the reranker recipe (resources/quickstart/reranker-cpu.yaml)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores other jobs leave free, at least 1)")
    _add_load_args(p)
    p.set_defaults(dtype="float32")  # an untrained bidirectional conversion is fragile in bf16 (README, Speed)
    p.set_defaults(func=cmd_quickstart)
    for module in FEATURE_CLIS:
        importlib.import_module(module).add_parser(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    from qzhou.evaluation.cli import compare_parser, is_compare

    if is_compare(argv):  # `eval compare` has its own options and help
        return compare_parser(Parser).parse_args(argv[2:])
    return build_parser().parse_args(argv)


#: errors that are the user's to fix: one line, no traceback (OSError: a missing, unreadable or unwritable path)
USER_ERRORS = (OSError, ValueError, KeyError, TypeError)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"qzhou {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # user errors get one line; a TrainingError (NaN loss, ...) is one too
        if not isinstance(e, USER_ERRORS) and type(e).__name__ != "TrainingError":
            raise
        message = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
        print(f"qzhou {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
