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


def cmd_sample(a: argparse.Namespace) -> None:
    from collections import Counter

    from qzhou.data.manifest import load_manifest
    from qzhou.data.readers import read_rows
    from qzhou.data.records import normalize_text, texts_of
    from qzhou.data.sampler import MultiTaskBatchSampler

    manifest = load_manifest(a.manifest)
    keys = [[[hash(normalize_text(t)) for t in texts_of(r)] for _, r in read_rows(d.path)] for d in manifest.datasets]
    default = {"retrieval": a.batch_size, "sts": a.batch_size, "classification": a.batch_size}
    sampler = MultiTaskBatchSampler([len(k) for k in keys], [d.task for d in manifest.datasets],
                                    [d.batch_size or default[d.task] for d in manifest.datasets],
                                    alpha=a.alpha, retrieval_share=a.retrieval_share, seed=a.seed,
                                    keys=lambda d, i: keys[d][i])
    drawn = Counter(sampler.next_batch()[0] for _ in range(a.steps))
    print(f"{'dataset':<24}{'task':<16}{'rows':>8}{'p':>8}{'drawn':>8}")
    for i, d in enumerate(manifest.datasets):
        print(f"{d.name:<24}{d.task:<16}{len(keys[i]):>8}{sampler.probabilities[i]:>8.3f}{drawn[i] / a.steps:>8.3f}")


def _reader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--delimiter", default=None, help="CSV/TSV delimiter: a character, 'tab' or '\\t' (default: ',' for .csv, TAB otherwise)")
    p.add_argument("--no-header", action="store_true", help="the file has no header row; columns are 0, 1, ...")
    p.add_argument("--columns", default=None, help="comma-separated column names (also for parallel line files)")
    p.add_argument("--no-quoting", action="store_true", help="treat quote characters as text (e.g. STS-B)")
    p.add_argument("--quiet", action="store_true")


def add_parser(sub) -> None:
    from qzhou.data.converters import CONVERTERS

    data = sub.add_parser("data", help="convert, validate and decontaminate training data; preview the sampler")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("convert", help="a common dataset shape -> unified records (JSONL)")
    p.add_argument("--from", dest="kind", required=True, choices=list(CONVERTERS))
    p.add_argument("input", help="a file, a HF datasets folder, or parallel line files a,b,c (with --columns)")
    p.add_argument("output", help="records .jsonl (bad rows go to OUTPUT.skipped.jsonl)")
    p.add_argument("--field", action="append", metavar="ROLE=COLUMN", help="map a role to a column (repeatable)")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip")
    p.add_argument("--instruction", default=None, help="store this instruction on every record")
    p.add_argument("--prompt", default=None, help="reading-comprehension prompt between context and question")
    p.add_argument("--negatives", type=int, default=4, help="classification: negatives per record")
    p.add_argument("--seed", type=int, default=0)
    _reader_args(p)
    p.set_defaults(func=cmd_convert)

    p = dsub.add_parser("validate", help="check record files: counts, errors, warnings, label distribution")
    p.add_argument("files", nargs="+")
    p.add_argument("--task", choices=["retrieval", "sts", "classification"], default=None)
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip")
    p.add_argument("--max-chars", type=int, default=8192, help="warn about texts longer than this")
    p.add_argument("--clean", default=None, help="write the valid records here (bad ones to CLEAN.skipped.jsonl)")
    p.add_argument("--report", default=None, help="write the reports as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = dsub.add_parser("decontaminate", help="drop training records that share a text with evaluation files")
    p.add_argument("train", nargs="+")
    p.add_argument("--eval", nargs="+", required=True, help="evaluation files (any readable format)")
    p.add_argument("--eval-field", action="append", help="only these fields of the eval files (repeatable)")
    p.add_argument("--output-dir", required=True)
    _reader_args(p)
    p.set_defaults(func=cmd_decontaminate)

    p = dsub.add_parser("sample", help="draw batches from a manifest and print the dataset proportions")
    p.add_argument("manifest")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--retrieval-share", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)
