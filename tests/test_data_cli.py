"""`qzhou data ...` from the command line: convert, decontaminate and the sampler preview."""

from __future__ import annotations

import json

from qzhou.cli import main


def test_convert_decontaminate_and_sample(tmp_path, capsys):
    (tmp_path / "sts.tsv").write_text("x\ty\t1.5\nA cat sits.\tA cat is sitting.\t4.5\nDogs bark.\tIt rains.\t0.5\n")
    assert main(["data", "convert", "--from", "sts-score", str(tmp_path / "sts.tsv"), str(tmp_path / "sts.jsonl"),
                 "--delimiter", "tab", "--no-header", "--field", "text1=0", "--field", "text2=1", "--field", "score=2",
                 "--instruction", "Retrieve semantically similar text", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["written"], summary["skipped"]) == (6, 0)
    first = json.loads((tmp_path / "sts.jsonl").read_text().splitlines()[0])
    assert first == {"text1": "x", "text2": "y", "score": 1.5, "instruction": "Retrieve semantically similar text"}

    (tmp_path / "eval.txt").write_text("text\ndogs  BARK.\n")
    assert main(["data", "decontaminate", str(tmp_path / "sts.jsonl"), "--eval", str(tmp_path / "eval.txt"),
                 "--output-dir", str(tmp_path / "clean"), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"][0]["kept"] == 4 and report["files"][0]["dropped"] == 2

    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps({"query": f"q{i}", "pos": [f"p{i}"]}) for i in range(40)))
    (tmp_path / "m.yaml").write_text("datasets:\n  - {name: sts, path: sts.jsonl, task: sts}\n"
                                     "  - {name: ret, path: r.jsonl, task: retrieval, batch_size: 4}\n")
    assert main(["data", "sample", str(tmp_path / "m.yaml"), "--steps", "400", "--retrieval-share", "0.72"]) == 0
    out = capsys.readouterr().out
    ret = next(line for line in out.splitlines() if line.startswith("ret"))
    assert ret.split()[3] == "0.720" and abs(float(ret.split()[4]) - 0.72) < 0.1


def test_bad_field_mapping(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("a,b\n1,2\n")
    assert main(["data", "convert", "--from", "qa", str(tmp_path / "a.csv"), str(tmp_path / "o.jsonl"),
                 "--field", "question"]) == 2
    assert "--field takes ROLE=COLUMN" in capsys.readouterr().err
