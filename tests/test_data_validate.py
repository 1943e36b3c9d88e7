"""Validation: each kind of bad row gets a message naming file, line and field; skip mode keeps every row
accounted for; duplicate detection against a brute-force count. Readers, manifest and decontamination."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qzhou.cli import main
from qzhou.data.decontaminate import decontaminate, eval_texts
from qzhou.data.manifest import load_manifest
from qzhou.data.readers import DataError, read_rows
from qzhou.data.records import normalize_text
from qzhou.data.validate import validate_file

BAD = [
    ({"query": "q", "pos": []}, "field 'pos' needs at least 1 text(s)"),
    ({"query": "", "pos": ["p"]}, "field 'query' is empty"),
    ({"query": "q", "pos": ["p"], "neg": ["P "]}, "field 'neg[0]' equals a positive"),
    ({"query": "q", "pos": "p"}, "field 'pos' is str, not a list of strings"),
    ({"text1": "a", "text2": "b", "score": "high"}, "field 'score' must be a finite number"),
    ({"text1": "a", "score": 1}, "record fields ['score', 'text1'] match no record schema"),
    ({"query": "q", "pos": ["p"], "neg": ["n"], "label": 1, "neg_labels": [1]}, "field 'neg_labels' a negative has the anchor's own class"),
    ({"text": "t", "label": None}, "field 'label' must be a string or an integer"),
]


@pytest.mark.parametrize("record,message", BAD, ids=[m.split()[1] for _, m in BAD])
def test_each_bad_row_is_named(tmp_path, record, message):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"query": "ok", "pos": ["fine"]}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        validate_file(f, on_error="fail", progress=False)
    assert str(e.value).startswith(f"{f}:2: ") and message in str(e.value)


def test_skip_mode_accounts_for_every_row(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = [{"query": "a", "pos": ["b"]}, *[r for r, _ in BAD[:4]], {"query": "c", "pos": ["d"], "neg": ["e"]}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    clean = tmp_path / "clean.jsonl"
    report = validate_file(f, clean=clean, progress=False)
    assert (report["rows"], report["valid"], report["invalid"]) == (6, 2, 4)
    assert len(clean.read_text().splitlines()) == 2
    side = [json.loads(x) for x in (tmp_path / "clean.skipped.jsonl").read_text().splitlines()]
    assert [s["source"] for s in side] == [f"{f}:{n}" for n in (2, 3, 4, 5)]
    assert all(s["reason"] and s["record"] for s in side)


def test_duplicates_warnings_and_distributions(tmp_path):
    import random

    rng = random.Random(0)
    rows = [{"text1": rng.choice("abcdef"), "text2": rng.choice("abcdef"), "score": rng.choice([0, 2.5, 5])} for _ in range(200)]
    rows.append({"text1": "x" * 50, "text2": "y", "score": 1})
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = validate_file(f, max_chars=40, progress=False)
    seen, dups = set(), 0
    for r in rows:  # brute force: a pair seen before (after normalisation) is a duplicate
        key = (normalize_text(r["text1"]), normalize_text(r["text2"]))
        dups += key in seen
        seen.add(key)
    assert report["warnings"]["duplicate pair"] == dups
    assert report["warnings"]["text1 longer than 40 characters"] == 1
    assert report["scores"]["min"] == 0 and report["scores"]["max"] == 5
    assert sum(report["scores"]["histogram"].values()) == 201


def test_label_distribution_and_cli_exit_code(tmp_path, capsys):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) for i in range(5)) + "\n")
    assert validate_file(f, progress=False)["labels"] == {"a": 3, "b": 2}
    f.write_text('{"text": "t", "label": "a"}\n{"text": "", "label": "a"}\n')
    assert main(["data", "validate", str(f), "--quiet"]) == 0
    assert "1 invalid" in capsys.readouterr().out
    assert main(["data", "validate", str(f), "--on-error", "fail", "--quiet"]) == 2
    assert f"{f}:2: field 'text' is empty" in capsys.readouterr().err


def test_readers(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1, 2]}), tmp_path / "x.parquet")
    assert [w for w, _ in read_rows(tmp_path / "x.parquet")] == [f"{tmp_path / 'x.parquet'}: row {i}" for i in (0, 1)]
    from datasets import Dataset

    Dataset.from_dict({"query": ["q"], "pos": [["p"]]}).save_to_disk(str(tmp_path / "hf"))
    assert [r for _, r in read_rows(tmp_path / "hf")] == [{"query": "q", "pos": ["p"]}]
    (tmp_path / "a.txt").write_text("1\n2\n")
    (tmp_path / "b.txt").write_text("x\n")
    with pytest.raises(DataError, match="parallel files differ in length"):
        list(read_rows(f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}", columns=["n", "s"]))
    (tmp_path / "c.csv").write_text("a,b\n1\n")
    with pytest.raises(DataError, match=r"c.csv:2: 1 columns, the header has 2"):
        list(read_rows(tmp_path / "c.csv"))
    (tmp_path / "u.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"u.jsonl:2: not valid UTF-8"):
        list(read_rows(tmp_path / "u.jsonl"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")


def test_manifest(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    m = tmp_path / "m.yaml"
    m.write_text("datasets:\n  - {name: a, path: a.jsonl, task: sts, batch_size: 8}\n")
    assert load_manifest(m).datasets[0].path == tmp_path / "a.jsonl"
    m.write_text("datasets:\n  - {name: a, path: a.jsonl, task: sts, batchsize: 8}\n")
    with pytest.raises(ValueError, match="batchsize"):
        load_manifest(m)
    m.write_text("datasets:\n  - {name: a, path: nope.jsonl, task: sts}\n")
    with pytest.raises(FileNotFoundError, match="dataset 'a'"):
        load_manifest(m)


def test_decontamination(tmp_path):
    ev = tmp_path / "eval.csv"
    ev.write_text("s1,s2\nA man plays  GUITAR.,x y\n")
    train = tmp_path / "train.jsonl"
    rows = [{"text1": "a man plays guitar.", "text2": "z", "score": 1}, {"query": "q", "pos": ["X Y"]},
            {"query": "clean", "pos": ["fine"]}]
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = decontaminate(train, tmp_path / "out" / "train.jsonl", eval_texts([ev]), progress=False)
    assert (s["kept"], s["dropped"]) == (1, 2)
    dropped = [json.loads(x) for x in (tmp_path / "out" / "train.contaminated.jsonl").read_text().splitlines()]
    assert [d["matched"] for d in dropped] == ["a man plays guitar.", "X Y"]
