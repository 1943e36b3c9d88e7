"""`qzhou eval`: parses arguments and calls the library (`evaluate`, `run_mteb`, `Results.save`, `compare`).

    qzhou eval MODEL --tasks suite|NAME|FILE.yaml|DIR ... [--rules qzhou|qwen3|none] [--out DIR] [--dtype ...]
    qzhou eval MODEL --mteb "MTEB(eng, v2)" ...            (mteb's data comes from the Hugging Face hub)
    qzhou eval EMBEDDER --rerank RERANKER [--rerank-top-k K] --tasks ... | --mteb ...   (two stages side by side)
    qzhou eval compare A.json B.json ... [--out DIR]
    qzhou eval --list-tasks

`eval compare` has its own parser (`compare_parser`); `qzhou.cli.main` routes to it with `is_compare`, so a model
folder named `compare` is still evaluable (`qzhou eval compare --tasks ...` when ./compare is a model folder).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

EPILOG = """examples:
  qzhou eval out/my-embedder --tasks suite --out out/eval/mine
  qzhou eval sentence-transformers/all-MiniLM-L6-v2 --tasks STSBenchmark SICK-R --rules none
  qzhou eval out/my-embedder --tasks my_tasks/ --rules qwen3
  qzhou eval out/my-embedder --mteb "MTEB(eng, v2)" --dtype bfloat16
  qzhou eval out/my-embedder --rerank out/my-reranker --rerank-top-k 100 --tasks cisi trecqa
  qzhou eval out/my-embedder --rerank out/my-reranker --mteb SciFact NFCorpus --out out/eval/two-stage
  qzhou eval compare out/eval/a/results.json out/eval/b --out out/eval/compare
  qzhou eval --list-tasks
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="MTEB metrics on local YAML tasks or mteb benchmarks; 'eval compare A.json B.json' side by side",
        description="Evaluate an embedder with MTEB's metrics and protocols, with QZhou's or Qwen3's per-task "
                    "instructions, and write results.json, results.md and results.png.",
        epilog=EPILOG)
    p.add_argument("model", nargs="?", help="model folder, hub id, .gguf file or 'default'; "
                   "'compare' starts `qzhou eval compare` (see its --help)")
    p.add_argument("--list-tasks", action="store_true", help="print the built-in task names and types, and exit")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="'suite' (every built-in task), built-in names, task YAML files or folders of them")
    p.add_argument("--mteb", nargs="+", metavar="NAME",
                   help="mteb benchmarks or tasks, e.g. 'MTEB(eng, v2)' 'MTEB(cmn, v1)' (downloads their data)")
    p.add_argument("--instructions", default=None, metavar="FILE",
                   help="(--mteb) YAML/JSON {tasks: {Name: {type, instruction}}} for tasks the built-in tables lack")
    p.add_argument("--rules", choices=["qzhou", "qwen3", "none"], default="qzhou",
                   help="which texts get the task instruction: QZhou's or Qwen3's evaluation rules, or none for "
                        "models trained without instructions (default: qzhou)")
    p.add_argument("--out", default=None, help="report folder (default: out/eval/<model name>; compare: print only)")
    p.add_argument("--data-root", default=None,
                   help="folder the built-in tasks read from (default: $QZHOU_DATA, else ../shared/data)")
    p.add_argument("--attention", choices=["bidirectional", "causal"], default=None,
                   help="override the model's attention (e.g. a base LLM as a bidirectional embedder)")
    p.add_argument("--pooling", choices=["mean", "last", "cls"], default=None, help="override the model's pooling")
    p.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights' dtype; auto: bfloat16 on GPUs and CPUs with native bf16, else float32")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--rerank", default=None, metavar="RERANKER",
                   help="rerank the first stage's top-k with this reranker (Retrieval and Reranking tasks) and "
                        "report both stages side by side (qzhou.evaluation.rerank)")
    p.add_argument("--rerank-top-k", type=int, default=None, metavar="K",
                   help="(--rerank) first-stage documents reranked per query (default: 100)")
    p.add_argument("--rerank-fusion", default=None, choices=["none", "rrf"],
                   help="(--rerank, local --tasks) order the top-k by the reranker alone (none, the default) or by "
                        "reciprocal rank fusion of both stages (rrf: 1/(60 + rank) summed)")
    p.add_argument("--first-stage-runs", default=None, metavar="DIR",
                   help="(--rerank) where first-stage runs (local runs, mteb predictions) are kept and reused "
                        "(default: OUT/runs)")
    p.set_defaults(func=cmd_eval)


def is_compare(argv: list[str]) -> bool:
    """`eval compare ...` means the compare command, unless ./compare is a model folder given --tasks/--mteb."""
    if argv[:2] != ["eval", "compare"]:
        return False
    model_folder = (Path("compare") / "config.json").is_file() or any(Path("compare").glob("*.gguf"))
    return not (model_folder and any(x in argv for x in ("--tasks", "--mteb")))


def compare_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser_class(prog="qzhou eval compare", description="Side-by-side table (and chart) of results files "
                     "written by `qzhou eval`.\n(To evaluate a model folder named compare: qzhou eval ./compare ...)")
    p.add_argument("files", nargs="+", help="results.json files, or folders holding one")
    p.add_argument("--out", default=None, help="folder for compare.md and compare.png (default: print only)")
    p.set_defaults(func=cmd_compare, command="eval compare")
    return p


def list_tasks() -> None:
    from qzhou.evaluation.tasks import builtin_tasks, load_spec

    print(f"{'task':<28}{'type':<22}{'language':<10}file")
    for name, path in builtin_tasks().items():
        spec = load_spec(path)
        print(f"{name:<28}{spec.type:<22}{spec.language:<10}{path.name}")
    print("\n--tasks takes these names (any case), 'suite' for all of them, task YAML files or folders of them")


def cmd_eval(a: argparse.Namespace) -> None:
    if a.list_tasks:
        return list_tasks()
    if not a.model:
        raise ValueError("give a MODEL to evaluate (or --list-tasks, or `qzhou eval compare A.json B.json`)")
    if a.instructions and not a.mteb:
        raise ValueError("--instructions applies to --mteb tasks; local task files carry their own instruction")
    if not a.tasks and not a.mteb:
        raise ValueError("nothing to evaluate: add --tasks suite (the built-in suite), --tasks FILE.yaml, "
                         "or --mteb 'MTEB(eng, v2)'")
    check_rerank_flags(a)
    from qzhou import Embedder
    from qzhou.evaluation.report import Results, markdown
    from qzhou.evaluation.runner import evaluate

    if a.tasks:  # find task files before the (slow) model load, so a typo fails at once
        from qzhou.evaluation.tasks import resolve_tasks

        resolve_tasks(a.tasks, a.data_root)
    embedder = Embedder.load(a.model, attention=a.attention, pooling=a.pooling, max_length=a.max_length,
                             dtype=a.dtype, device=a.device)
    if a.rerank:  # two stages: embedder then reranker (qzhou.evaluation.rerank)
        from qzhou.evaluation.rerank import run_cli

        return run_cli(a, embedder, _out(a))
    parts: list[Results] = []
    if a.tasks:
        parts.append(evaluate(embedder, a.tasks, a.rules, data_root=a.data_root, model_source=a.model))
    if a.mteb:
        from qzhou.evaluation.mteb_adapter import run_mteb
        from qzhou.instructions import load_user_tasks

        extra = load_user_tasks(a.instructions) if a.instructions else None
        parts.append(run_mteb(embedder, a.mteb, a.rules, out=_out(a), model_source=a.model, extra=extra))
    results = parts[0]
    for extra in parts[1:]:
        results.tasks += extra.tasks
    paths = results.save(_out(a))
    print(markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def check_rerank_flags(a: argparse.Namespace) -> None:
    """--rerank-top-k, --rerank-fusion and --first-stage-runs belong to --rerank; their defaults are filled in
    here. Fusion is computed on local runs only (mteb ranks the reranked run itself)."""
    if not a.rerank:
        for flag, value in (("--rerank-top-k", a.rerank_top_k), ("--rerank-fusion", a.rerank_fusion),
                            ("--first-stage-runs", a.first_stage_runs)):
            if value is not None:
                raise ValueError(f"{flag} applies to two-stage evaluation: add --rerank RERANKER")
        return
    if a.rerank_fusion not in (None, "none") and a.mteb:
        raise ValueError("--rerank-fusion applies to local --tasks only; mteb ranks the reranked run itself "
                         "(drop --mteb, or run it without --rerank-fusion)")
    a.rerank_fusion = a.rerank_fusion or "none"
    if a.rerank_top_k is None:
        a.rerank_top_k = 100
    if a.rerank_top_k < 1:
        raise ValueError(f"--rerank-top-k must be a positive number of documents per query (got {a.rerank_top_k})")


def cmd_compare(a: argparse.Namespace) -> None:
    from qzhou.evaluation.report import Results, compare, plot

    runs = [Results.load(Path(f) / "results.json" if Path(f).is_dir() else f) for f in a.files]
    table = compare(runs)
    print(table)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table, encoding="utf-8")
        plot(runs, out / "compare.png")
        print(f"wrote {out / 'compare.md'}, {out / 'compare.png'}")


def _out(a: argparse.Namespace) -> Path:
    if a.out:
        return Path(a.out)
    name = Path(a.model.rstrip("/")).name or "model"
    return Path("out") / "eval" / re.sub(r"[^\w.-]+", "_", f"{name}-{a.rules}")
