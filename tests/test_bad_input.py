"""The bad-input contract (issue 16), file by file: hostile inputs built here, the CLI run as a subprocess where
the bug was in the CLI. In skip mode every input line ends up in the output or in OUTPUT.skipped.jsonl with its
line number and reason (rows read = written + skipped); fail mode stops at the first bad line and writes nothing;
no user error shows a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import cli, run_main

from qzhou.data.convert import convert
from qzhou.data.readers import DataError, read_rows
from qzhou.data.validate import validate_file

GOOD = '{"query": "q%d", "pos": ["p%d"]}'
BOM = b"\xef\xbb\xbf"


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def hostile_jsonl(path: Path) -> dict[int, str]:
    """A JSONL file with a BOM, a blank line and one bad line of each kind; -> {line number: reason fragment}."""
    lines = [
        BOM + (GOOD % (1, 1)).encode(),                   # 1 good, after a BOM
        b'{"query": "q2", "pos": ["p2"',                  # 2 broken JSON
        b'{"query": "caf\xe9", "pos": ["p3"]}',           # 3 not UTF-8 (latin-1 byte)
        (GOOD % (4, 4)).encode(),                         # 4 good
        b'{"pos": ["p5"]}',                               # 5 a field missing mid-file
        b"42",                                            # 6 a bare JSON value
        b'{"query": "\\ud800", "pos": ["p7"]}',           # 7 a lone surrogate
        b"",                                              # 8 blank: no row
        (GOOD % (9, 9)).encode(),                         # 9 good
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {2: "invalid JSON", 3: "not valid UTF-8", 5: "no field 'query'", 6: "bare JSON number",
            7: "lone surrogate"}


# ------------------------------------------------------------------------------------------- data convert
def test_convert_skip_mode_routes_every_bad_line_with_its_number(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    bad = hostile_jsonl(src)
    code, stdout, stderr = run_main(capsys, "data", "convert", "--from", "retrieval", str(src), str(out), "--quiet")
    assert code == 0
    summary = json.loads(stdout)
    assert (summary["rows_read"], summary["written"], summary["skipped"]) == (8, 3, 5)
    assert summary["rows_read"] == summary["written"] + summary["skipped"]
    assert "8 rows read, 3 records written, 5 skipped" in stderr
    assert [x["query"] for x in records(out)] == ["q1", "q4", "q9"]
    skipped = records(tmp_path / "out.skipped.jsonl")
    assert [s["line"] for s in skipped] == sorted(bad)
    for s in skipped:
        assert bad[s["line"]] in s["reason"] and s["source"] == f"{src}:{s['line']}"
    assert skipped[0]["text"] == '{"query": "q2", "pos": ["p2"'  # the unreadable line itself is kept


def test_csv_bom_quoted_newline_and_short_row(tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    src.write_bytes(BOM + b'title,body\nt1,"first line\nsecond line"\n\nt2\nt3,b3\n')
    s = convert("title-body", src, out, progress=False)
    assert (s["rows_read"], s["written"], s["skipped"]) == (3, 2, 1)
    assert records(out)[0] == {"query": "t1", "pos": ["first line\nsecond line"], "neg": []}  # newline kept
    (skip,) = records(tmp_path / "out.skipped.jsonl")
    assert skip["line"] == 5 and "1 columns, the header has 2" in skip["reason"]  # numbered past the 2-line row


def test_fail_mode_stops_at_the_first_bad_line_and_writes_nothing(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    hostile_jsonl(src)
    r = cli("data", "convert", "--from", "retrieval", str(src), str(out), "--on-error", "fail", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"qzhou data: error: {src}:2: invalid JSON "
                                             "(Expecting ',' delimiter at column 29)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no side file, no .partial


def test_validate_reports_every_invalid_line(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    bad = hostile_jsonl(src)
    with src.open("a") as f:  # two more invalid records: seven in all, more than the five examples printed
        f.write('{"query": "q10", "pos": []}\n{"query": "q11", "pos": ["x"], "neg": ["x"]}\n')
    code, stdout, _ = run_main(capsys, "data", "validate", str(src), "--quiet")
    assert code == 0 and f"{src}: 10 rows, 3 valid, 7 invalid" in stdout
    examples = [x for x in stdout.splitlines() if x.startswith("  e.g.")]
    assert [int(x.split(":")[1]) for x in examples] == sorted(bad)  # the first five, in file order
    assert "... and 2 more errors" in stdout
    report = validate_file(src, clean=tmp_path / "clean.jsonl", progress=False)
    lines = sorted(x["line"] for x in records(tmp_path / "clean.skipped.jsonl"))
    assert report["invalid"] == 7 and lines == [*sorted(bad), 10, 11]
    assert len(records(tmp_path / "clean.jsonl")) == 3


def test_empty_inputs_warn(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    code, out, err = run_main(capsys, "data", "convert", "--from", "retrieval", str(tmp_path / "empty.jsonl"),
                              str(tmp_path / "o.jsonl"))
    assert code == 0 and "no rows (an empty file?)" in err and json.loads(out)["rows_read"] == 0
    code, out, _ = run_main(capsys, "data", "validate", str(tmp_path / "empty.jsonl"))
    assert "0 rows" in out and "holds no rows (an empty file?)" in out


# ------------------------------------------------------------------------------------------- one reader layer
def test_the_three_readers_agree(tmp_path):
    from qzhou.evaluation.readers import Source
    from qzhou.evaluation.readers import read_rows as eval_rows
    from qzhou.textio import read_texts

    texts = ["plain", "two\nlines", "a, comma", 'a "quote"']
    csv_file = tmp_path / "t.csv"
    csv_file.write_bytes(BOM + b'id,text\r\n1,plain\r\n\r\n2,"two\nlines"\r\n3,"a, comma"\r\n4,"a ""quote"""\r\n')
    assert [r["text"] for _, r in read_rows(csv_file)] == texts
    assert read_texts(csv_file, "text") == texts
    assert list(eval_rows(Source(path="t.csv", columns={"text": "text"}), csv_file, None)) == [
        {"text": t} for t in texts]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(BOM + b"\n".join(json.dumps({"text": t}).encode() for t in texts[:2]) + b"\n\n"
                      + json.dumps({"text": texts[2]}).encode() + b"\n")
    assert [r["text"] for _, r in read_rows(jsonl)] == read_texts(jsonl) == texts[:3]


def test_readers_name_the_line_in_fail_mode(tmp_path):
    for content, match in [(b'{"a": 1}\n42\n', r"t.jsonl:2: a bare JSON number"),
                           (b'{"a": "\\udc00x"}\n', r"t.jsonl:1: field 'a' holds a lone surrogate"),
                           (b'{"a": 1}\n{"a": "\xff"}\n', r"t.jsonl:2: not valid UTF-8 \(byte 0xff at column 8\)")]:
        (tmp_path / "t.jsonl").write_bytes(content)
        with pytest.raises(DataError, match=match):
            list(read_rows(tmp_path / "t.jsonl"))
