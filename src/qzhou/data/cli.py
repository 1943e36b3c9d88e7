"""`qzhou data convert | validate | decontaminate | sample`: argument parsing only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fields(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        role, sep, column = p.partition("=")
        if not sep or not role or not column:
            raise ValueError(f"--field takes ROLE=COLUMN (got {p!r})")
        out[role] = column
    return out


def _reader(a: argparse.Namespace) -> dict:
    delimiter = {"tab": "\t", "\\t": "\t"}.get(a.delimiter, a.delimiter)
    return {"delimiter": delimiter, "header": not a.no_header,
            "columns": a.columns.split(",") if a.columns else None, "quoting": not a.no_quoting}


def cmd_convert(a: argparse.Namespace) -> None:
    from qzhou.data.convert import convert

    opts = {"negatives": a.negatives, "seed": a.seed} if a.kind == "classification" else {}
    if a.prompt is not None:
        opts["prompt"] = a.prompt
    summary = convert(a.kind, a.input, a.output, fields=_fields(a.field), on_error=a.on_error,
                      reader=_reader(a), instruction=a.instruction, progress=not a.quiet, **opts)
    print(json.dumps(summary, indent=2, ensure_ascii=False))


def cmd_validate(a: argparse.Namespace) -> None:
    from qzhou.data.validate import format_report, validate_file

    if a.clean and len(a.files) != 1:
        raise ValueError("--clean writes one file: validate one input at a time with it")
    reports = [validate_file(f, task=a.task, on_error=a.on_error, max_chars=a.max_chars, clean=a.clean,
                             progress=not a.quiet) for f in a.files]
    for r in reports:
        print(format_report(r))
    if a.report:
        Path(a.report).write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if any(r["invalid"] for r in reports) and a.on_error == "fail":
        sys.exit(1)


def cmd_decontaminate(a: argparse.Namespace) -> None:
    from qzhou.data.decontaminate import decontaminate, eval_texts

    blocked = eval_texts(a.eval, a.eval_field or None, _reader(a))
    out_dir = Path(a.output_dir)
    results = [decontaminate(t, out_dir / Path(t).with_suffix(".jsonl").name, blocked, not a.quiet) for t in a.train]
    print(json.dumps({"eval_texts": len(blocked), "files": results}, indent=2, ensure_ascii=False))


def _sampling(a: argparse.Namespace) -> tuple[list, list[int], dict]:
    """(datasets, batch sizes, sampler settings) as training has them: a recipe's stage (`--stage`, default the
    first) with its batch sizes, alpha, retrieval share and seed, or a manifest with the flags' values."""
    import yaml

    raw = yaml.safe_load(Path(a.manifest).read_text(encoding="utf-8")) or {}
    if isinstance(raw, dict) and "stages" in raw:
        from qzhou.training.recipe import load_recipe

        cfg = load_recipe(a.manifest)
        stages = {s.name: s for s in cfg.training_stages()}  # (merge stages draw no batches)
        name = a.stage or next(iter(stages))
        if name not in stages:
            raise ValueError(f"--stage {name!r}: the recipe's training stages are {', '.join(stages)}")
        specs = {d.name: d for d in cfg.datasets}
        datasets = [specs[n] for n in stages[name].datasets]
        share = stages[name].retrieval_share if a.retrieval_share is None else a.retrieval_share
        settings = {"alpha": cfg.alpha if a.alpha is None else a.alpha, "retrieval_share": share,
                    "seed": cfg.seed if a.seed is None else a.seed}
        return datasets, [cfg.batch_size_of(d) for d in datasets], settings
    from qzhou.data.manifest import load_manifest

    datasets = load_manifest(a.manifest).datasets
    settings = {"alpha": 0.5 if a.alpha is None else a.alpha, "retrieval_share": a.retrieval_share,
                "seed": a.seed or 0}
    return datasets, [d.batch_size or a.batch_size for d in datasets], settings


def cmd_sample(a: argparse.Namespace) -> None:
    """Draw batches exactly as training draws them (same records, sampler, de-duplication keys and seed) and print
    the dataset proportions and the first batches' rows."""
    from collections import Counter

    from qzhou.data.manifest import load_records
    from qzhou.data.sampler import sampler_for
    from qzhou.training.objectives import objective_for

    datasets, batch_sizes, settings = _sampling(a)
    records = [load_records(d) for d in datasets]
    sampler = sampler_for(records, [objective_for(d.task).retrieval for d in datasets], batch_sizes, **settings)
    batches = [sampler.next_batch() for _ in range(a.steps)]
    drawn = Counter(d for d, _ in batches)
    print(f"{'dataset':<24}{'task':<16}{'rows':>8}{'p':>8}{'drawn':>8}")
    for i, d in enumerate(datasets):
        print(f"{d.name:<24}{d.task:<16}{len(records[i]):>8}{sampler.probabilities[i]:>8.3f}{drawn[i] / a.steps:>8.3f}")
    for step, (d, rows) in enumerate(batches[:a.show], 1):
        print(f"step {step}: {datasets[d].name} rows {rows}")


def _reader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--delimiter", default=None, help="CSV/TSV delimiter: a character, 'tab' or '\\t' (default: ',' for .csv, TAB otherwise)")
    p.add_argument("--no-header", action="store_true", help="the file has no header row; columns are 0, 1, ...")
    p.add_argument("--columns", default=None, help="comma-separated column names (also for parallel line files)")
    p.add_argument("--no-quoting", action="store_true", help="treat quote characters as text (e.g. STS-B)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(sub) -> None:
    from qzhou.data.converters import CONVERTERS

    data = sub.add_parser("data", help="convert, validate and decontaminate training data; preview the sampler")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("convert", help="a common dataset shape -> unified records (JSONL)")
    p.add_argument("--from", dest="kind", required=True, choices=list(CONVERTERS),
                   help="the source's shape; its roles (map them with --field): "
                        + "; ".join(f"{k}: {', '.join(roles)}" for k, (_, roles) in CONVERTERS.items()))
    p.add_argument("input", help="a file, a HF datasets folder, or parallel line files a,b,c (with --columns)")
    p.add_argument("output", help="records .jsonl (bad rows go to OUTPUT.skipped.jsonl)")
    p.add_argument("--field", action="append", metavar="ROLE=COLUMN", help="map a role to a column (repeatable)")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="skip: bad rows go to OUTPUT.skipped.jsonl with line and reason; fail: stop at the first, "
                        "write nothing")
    p.add_argument("--instruction", default=None, help="store this instruction on every record")
    p.add_argument("--prompt", default=None, help="reading-comprehension prompt between context and question")
    p.add_argument("--negatives", type=int, default=4, help="classification: negatives per record")
    p.add_argument("--seed", type=int, default=0, help="classification: seed of the positive / negative draws")
    _reader_args(p)
    p.set_defaults(func=cmd_convert)

    p = dsub.add_parser("validate", help="check record files: counts, errors, warnings, label distribution")
    p.add_argument("files", nargs="+", help="record files (.jsonl, .csv, .tsv, .parquet or a HF datasets folder)")
    p.add_argument("--task", choices=["retrieval", "sts", "classification"], default=None,
                   help="check every record against this task (default: the task each record's fields imply)")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="skip: report every invalid line (the first 5 shown, all counted); fail: stop at the first")
    p.add_argument("--max-chars", type=int, default=8192, help="warn about texts longer than this")
    p.add_argument("--clean", default=None, help="write the valid records here (bad ones to CLEAN.skipped.jsonl)")
    p.add_argument("--report", default=None, help="write the reports as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_validate)

    p = dsub.add_parser("decontaminate", help="drop training records that share a text with evaluation files")
    p.add_argument("train", nargs="+", help="training record files to clean")
    p.add_argument("--eval", nargs="+", required=True, help="evaluation files (any readable format)")
    p.add_argument("--eval-field", action="append", help="only these fields of the eval files (repeatable)")
    p.add_argument("--output-dir", required=True, help="cleaned files go here, under their own names (.jsonl)")
    _reader_args(p)
    p.set_defaults(func=cmd_decontaminate)

    p = dsub.add_parser("sample", help="draw batches as training does (a manifest or a recipe's stage) and print "
                                       "the dataset proportions and the first batches")
    p.add_argument("manifest", help="a dataset manifest, or a training recipe (its stage's datasets and settings)")
    p.add_argument("--stage", default=None, help="recipe stage to preview (default: the first)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--show", type=int, default=3, help="print the rows of the first N batches")
    p.add_argument("--batch-size", type=int, default=32, help="manifest datasets without a batch_size")
    p.add_argument("--alpha", type=float, default=None, help="default: the recipe's, else 0.5")
    p.add_argument("--retrieval-share", type=float, default=None, help="default: the recipe stage's")
    p.add_argument("--seed", type=int, default=None, help="default: the recipe's, else 0")
    p.set_defaults(func=cmd_sample)
