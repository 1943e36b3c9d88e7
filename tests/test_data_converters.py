"""Every converter on a hand-made fixture (expected records written out by hand), and on real samples of the
shared datasets (skipped with a reason when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED

from qzhou.data.convert import convert
from qzhou.data.readers import DataError


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def jsonl(tmp_path, name, rows):
    return write(tmp_path, name, "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


def test_title_body_and_abstract(tmp_path):
    src = write(tmp_path, "a.csv", "title,body,abstract\nCats,Cats purr.,About cats\nDogs,Dogs bark.,About dogs\n")
    convert("title-body", src, tmp_path / "o.jsonl", progress=False)
    assert records(tmp_path / "o.jsonl") == [{"query": "Cats", "pos": ["Cats purr."], "neg": []},
                                             {"query": "Dogs", "pos": ["Dogs bark."], "neg": []}]
    convert("title-abstract", src, tmp_path / "o.jsonl", progress=False)
    assert records(tmp_path / "o.jsonl")[1] == {"query": "Dogs", "pos": ["About dogs"], "neg": []}


def test_qa_plain_labelled_and_chat(tmp_path):
    src = jsonl(tmp_path, "qa.jsonl", [{"q": "Why?", "a": "Because."}])
    convert("qa", src, tmp_path / "o.jsonl", fields={"question": "q", "answer": "a"}, progress=False)
    assert records(tmp_path / "o.jsonl") == [{"query": "Why?", "pos": ["Because."], "neg": []}]
    src = write(tmp_path, "l.csv", "qtext,label,atext\nWho?,0,Nobody.\nWho?,1,Alice.\nWho?,0,Bob.\nWhen?,0,Never.\n")
    summary = convert("qa", src, tmp_path / "o.jsonl", fields={"question": "qtext", "answer": "atext"}, progress=False)
    assert records(tmp_path / "o.jsonl") == [{"query": "Who?", "pos": ["Alice."], "neg": ["Nobody.", "Bob."]}]
    assert summary["skipped"] == 1 and summary["skip_reasons"] == {"question has no positive": 1}
    chat = jsonl(tmp_path, "c.jsonl", [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                                                     {"role": "assistant", "content": "See you"}]}])
    convert("chat", chat, tmp_path / "o.jsonl", progress=False)
    assert [r["query"] for r in records(tmp_path / "o.jsonl")] == ["Hi", "Bye"]


def test_reading_comprehension_default_and_custom_prompt(tmp_path):
    src = jsonl(tmp_path, "rc.jsonl", [{"context": "天空是蓝色的。", "question": "天空是什么颜色？", "answer": "蓝色"}])
    convert("reading-comprehension", src, tmp_path / "o.jsonl", progress=False)
    assert records(tmp_path / "o.jsonl") == [{"query": "天空是蓝色的。\n请阅读上述文章，回答下列问题：天空是什么颜色？",
                                              "pos": ["蓝色"], "neg": []}]
    convert("reading-comprehension", src, tmp_path / "o.jsonl", prompt="Q: ", progress=False)
    assert records(tmp_path / "o.jsonl")[0]["query"] == "天空是蓝色的。\nQ: 天空是什么颜色？"


def test_claim_evidence(tmp_path):
    src = write(tmp_path, "f.tsv", "claim\tevidence\tlabel\nC1\tE1\tSUPPORTS\nC1\tE2\tREFUTES\nC2\tE3\tNOT ENOUGH INFO\n"
                                   "C3\tE4\tREFUTES\n")
    s = convert("claim-evidence", src, tmp_path / "o.jsonl", progress=False)
    assert records(tmp_path / "o.jsonl") == [{"query": "C1", "pos": ["E1"], "neg": ["E2"]}]
    assert s["skipped"] == 2  # NEI row, and C3 without support: both in the side file
    side = records(tmp_path / "o.skipped.jsonl")
    assert {r["source"].rsplit(":", 1)[1] for r in side} == {"4", "5"}


def test_sts_score_binary_nli_both_directions(tmp_path):
    src = write(tmp_path, "s.csv", "a,b,score\nx,y,3.2\n")
    convert("sts-score", src, tmp_path / "o.jsonl", fields={"text1": "a", "text2": "b"}, progress=False)
    assert records(tmp_path / "o.jsonl") == [{"text1": "x", "text2": "y", "score": 3.2}, {"text1": "y", "text2": "x", "score": 3.2}]
    src = write(tmp_path, "b.csv", "text1,text2,label\na,b,yes\nc,d,False\ne,f,1\ng,h,maybe\n")
    s = convert("sts-binary", src, tmp_path / "o.jsonl", progress=False)
    assert [r["score"] for r in records(tmp_path / "o.jsonl")] == [1, 1, 0, 0, 1, 1]
    assert s["skip_reasons"] == {"label 'maybe' is not yes/no, true/false or 1/0": 1}
    src = write(tmp_path, "n.csv", "text1,text2,label\na,b,ENTAILMENT\nc,d,neutral\ne,f,contradiction\n")
    convert("nli", src, tmp_path / "o.jsonl", progress=False)
    assert [r["score"] for r in records(tmp_path / "o.jsonl")] == [2, 2, 1, 1, 0, 0]


def test_nli_triplets(tmp_path):
    src = write(tmp_path, "n.csv", "text1,text2,label\np,e1,entailment\np,n1,neutral\np,c1,contradiction\nq,e2,entailment\n")
    s = convert("nli-triplets", src, tmp_path / "o.jsonl", progress=False)
    assert records(tmp_path / "o.jsonl") == [{"query": "p", "pos": ["e1"], "neg": ["c1"]}]
    assert s["skip_reasons"] == {"neutral pair: no role in a triplet": 1, "premise lacks a contradiction": 1}


def test_classification(tmp_path):
    rows = [{"text": f"{lab} {i}", "label": lab} for lab in ("a", "b", "c") for i in range(3)] + [{"text": "lonely", "label": "d"}]
    src = jsonl(tmp_path, "c.jsonl", rows)
    s = convert("classification", src, tmp_path / "o.jsonl", negatives=3, seed=1, progress=False)
    out = records(tmp_path / "o.jsonl")
    assert len(out) == 9 and s["skipped"] == 1  # 'd' has no second text to be a positive
    ids = {"a": 0, "b": 1, "c": 2, "d": 3}
    for r in out:
        lab = r["query"].split()[0]
        assert r["label"] == ids[lab] and r["pos"][0].split()[0] == lab and r["pos"][0] != r["query"]
        assert len(r["neg"]) == 3 and all(n.split()[0] != lab for n in r["neg"])
        assert r["neg_labels"] == [{**ids, "lonely": 3}[n.split()[0]] for n in r["neg"]]


def test_retrieval_passthrough_and_field_errors(tmp_path):
    src = jsonl(tmp_path, "r.jsonl", [{"q": "x", "p": "y", "n": ["z"]}])
    convert("retrieval", src, tmp_path / "o.jsonl", fields={"query": "q", "pos": "p", "neg": "n"}, progress=False)
    assert records(tmp_path / "o.jsonl") == [{"query": "x", "pos": ["y"], "neg": ["z"]}]
    with pytest.raises(DataError, match=r"r.jsonl:1: no field 'query' for query .*--field query=NAME"):
        convert("retrieval", src, tmp_path / "o2.jsonl", on_error="fail", progress=False)
    assert not (tmp_path / "o2.jsonl.partial").exists() and not (tmp_path / "o2.jsonl").exists()
    s = convert("retrieval", src, tmp_path / "o2.jsonl", progress=False)  # skip mode: the row is skipped, named
    assert (s["rows_read"], s["written"], s["skipped"]) == (1, 0, 1)
    assert "--field query=NAME" in records(tmp_path / "o2.skipped.jsonl")[0]["reason"]
    with pytest.raises(DataError, match="not a role of retrieval"):
        convert("retrieval", src, tmp_path / "o.jsonl", fields={"title": "q"}, progress=False)
    with pytest.raises(DataError, match="unknown converter"):
        convert("tables", src, tmp_path / "o.jsonl", progress=False)


def test_on_error_fail_names_the_line(tmp_path):
    src = write(tmp_path, "s.csv", "text1,text2,score\na,b,1\nc,,2\n")
    with pytest.raises(DataError, match=r"s.csv:3: field 'text2' is empty"):
        convert("sts-score", src, tmp_path / "o.jsonl", on_error="fail", progress=False)
    assert not (tmp_path / "o.jsonl").exists()
    s = convert("sts-score", src, tmp_path / "o.jsonl", progress=False)
    assert (s["written"], s["skipped"]) == (2, 1)
    assert records(tmp_path / "o.skipped.jsonl")[0]["reason"] == "field 'text2' is empty"


# ---------------------------------------------------------------- real samples of the shared datasets
def shared(path: str) -> Path:
    p = SHARED / path
    if not p.exists():
        pytest.skip(f"{p} not present (the shared datasets live in ../shared/data)")
    return p


def test_real_stsb(tmp_path):
    src = shared("stsb/sts-train.csv")
    s = convert("sts-score", src, tmp_path / "o.jsonl", fields={"text1": "5", "text2": "6", "score": "4"},
                reader={"header": False, "quoting": False, "delimiter": "\t"}, progress=False)
    assert (s["written"], s["skipped"]) == (2 * 5749, 0)
    first = records(tmp_path / "o.jsonl")[0]
    assert first["text1"] == "A plane is taking off." and first["score"] == 5.0


def test_real_sick(tmp_path):
    s = convert("sts-score", shared("sick/sick2014/SICK_train.txt"), tmp_path / "o.jsonl",
                fields={"text1": "sentence_A", "text2": "sentence_B", "score": "relatedness_score"}, progress=False)
    assert (s["written"], s["skipped"]) == (9000, 0)
    s = convert("nli", shared("sick/sick2014/SICK_train.txt"), tmp_path / "n.jsonl",
                fields={"text1": "sentence_A", "text2": "sentence_B", "label": "entailment_judgment"}, progress=False)
    assert s["written"] == 9000 and {r["score"] for r in records(tmp_path / "n.jsonl")} == {0, 1, 2}


def test_real_snli_parallel_files(tmp_path):
    d = shared("snli-esnli")
    src = ",".join(str(d / f) for f in ("s1.dev", "s2.dev", "labels.dev"))
    reader = {"columns": ["text1", "text2", "label"]}
    s = convert("nli", src, tmp_path / "o.jsonl", reader=reader, progress=False)
    assert s["written"] == 2 * 9842
    s = convert("nli-triplets", src, tmp_path / "t.jsonl", reader=reader, progress=False)
    assert 2500 < s["written"] < 3300 and s["written"] + s["skipped"] > 0


def test_real_banking77_trecqa_zh(tmp_path):
    s = convert("classification", shared("banking77/train.csv"), tmp_path / "b.jsonl", fields={"label": "category"},
                progress=False)
    assert (s["written"], s["skipped"]) == (10003, 0)
    assert max(r["label"] for r in records(tmp_path / "b.jsonl")) == 76
    s = convert("qa", shared("trecqa-wang/train.csv"), tmp_path / "t.jsonl",
                fields={"question": "qtext", "answer": "atext"}, progress=False)
    assert s["written"] > 50 and all(r["pos"] for r in records(tmp_path / "t.jsonl"))
    s = convert("retrieval", shared("zh-train/text2vec_bge_finetune_data.jsonl"), tmp_path / "z.jsonl", progress=False)
    assert (s["written"], s["skipped"]) == (2701, 0)
