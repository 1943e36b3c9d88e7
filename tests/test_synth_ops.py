"""`qzhou synth OPERATION` end to end from the CLI against the local stub server: outputs, provenance,
policy, constraint retries, recorded failures, journal reuse and de-duplication."""

from __future__ import annotations

import json
import sqlite3

from synth_helpers import qzhou, read_jsonl, retrieval_rows, write_jsonl

from qzhou.synthesis.stub_server import StubServer, mock_reply


def synth(capsys, url, op, inp, out, *extra) -> dict:
    code = qzhou(["synth", op, "--input", inp, "--output", out, "--base-url", url, "--model", "stub", "--quiet",
                  "--max-attempts", "3", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_paraphrase_retrieval_then_rerun_sends_nothing(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "r.jsonl", retrieval_rows(6))
    out = tmp_path / "p.jsonl"
    with StubServer(faults=["429", "malformed"]) as s:
        summary = synth(capsys, s.url, "paraphrase", inp, out, "--n", "2")
        assert summary["written"] == 12 and summary["failed_records"] == 0
        assert summary["this_run"]["retries"] == {"http 429": 12, "invalid output": 12}
        first = out.read_text()
        sent = len(s.log)
        again = synth(capsys, s.url, "paraphrase", inp, out, "--n", "2")
        assert len(s.log) == sent and again["this_run"]["http_requests"] == 0  # all answers from the journal
        assert out.read_text() == first and again["journal"]["done"] == 12
    rows = read_jsonl(out)
    src = retrieval_rows(6)
    assert rows[0]["pos"] == src[0]["pos"] and rows[0]["query"] != src[0]["query"]
    assert rows[0]["source"] == {"operation": "paraphrase", "model": "stub", "record": "r0", "variant": 0,
                                 "fields": ["query"]}
    assert len({r["id"] for r in rows}) == 12


def test_sts_and_classification_keep_scores_and_labels(tmp_path, capsys):
    sts = write_jsonl(tmp_path / "sts.jsonl", [
        {"text1": "a man is playing a large guitar on stage", "text2": "a man plays an instrument", "score": 3.8}])
    cls = write_jsonl(tmp_path / "cls.jsonl", [{"text": "my card was declined at the shop today", "label": "card"}])
    with StubServer() as s:
        synth(capsys, s.url, "paraphrase", sts, tmp_path / "sts.out.jsonl")
        synth(capsys, s.url, "paraphrase", cls, tmp_path / "cls.out.jsonl")
        code = qzhou(["synth", "extend", "--input", sts, "--output", tmp_path / "x.jsonl", "--base-url", s.url,
                      "--model", "stub", "--quiet"])
        assert len(s.log) == 2  # the policy error came before any request
    [row] = read_jsonl(tmp_path / "sts.out.jsonl")
    assert row["score"] == 3.8 and row["text2"] == "a man plays an instrument" and row["text1"] != "a man is playing"
    [row] = read_jsonl(tmp_path / "cls.out.jsonl")
    assert row["label"] == "card" and row["text"] != "my card was declined at the shop today"
    assert code == 2
    assert f"{sts}:1: extend applies to retrieval records, this is a sts record" in capsys.readouterr().err


def test_constraint_violation_is_retried_then_recorded(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "r.jsonl", retrieval_rows(3))
    calls = []

    def responder(messages):
        calls.append(messages)
        user = messages[1]["content"]
        if "item 1 " in user:
            return json.dumps({"paraphrase": "item 1 " + "much longer " * 20})  # always too long
        if len(messages) == 2 and "item 0 " in user:
            return json.dumps({"paraphrase": "item 0"})  # too short once, then fine
        return mock_reply(messages)

    out = tmp_path / "p.jsonl"
    with StubServer(responder=responder) as s:
        summary = synth(capsys, s.url, "paraphrase", inp, out)
        assert summary["written"] == 2 and summary["failed_records"] == 1 and "--retry-failed" in summary["hint"]
        [failed] = read_jsonl(tmp_path / "p.jsonl.failed.jsonl")
        assert failed["source"] == f"{inp}:2" and "no valid answer in 3 attempts" in failed["error"]
        assert "words; it must have" in failed["error"]
        db = sqlite3.connect(tmp_path / "p.jsonl.jobs.sqlite")
        [(tokens,)] = db.execute("SELECT prompt_tokens FROM requests WHERE status = 'failed'").fetchall()
        db.close()
        assert tokens > 0  # the tokens of failed tries are accounted too
        n = len(s.log)
        synth(capsys, s.url, "paraphrase", inp, out)  # a failure is journaled too: not asked again
        assert len(s.log) == n
    assert any("rejected" in m[-1]["content"] and "item 0" in m[1]["content"] for m in calls)

    with StubServer() as s:  # the server is fixed: --retry-failed asks again, only for the failed one
        summary = synth(capsys, s.url, "paraphrase", inp, out, "--retry-failed")
        assert len(s.log) == 1 and summary["written"] == 3 and summary["failed_records"] == 0
    assert not (tmp_path / "p.jsonl.failed.jsonl").exists()


def test_extend_hard_negatives_and_dedup(tmp_path, capsys):
    rows = retrieval_rows(4)
    inp = write_jsonl(tmp_path / "r.jsonl", rows + [dict(rows[0], id="copy")])  # an exact duplicate record
    with StubServer() as s:
        ext = synth(capsys, s.url, "extend", inp, tmp_path / "e.jsonl", "--n", "2")
        hn = synth(capsys, s.url, "hard-negatives", inp, tmp_path / "h.jsonl", "--n", "3",
                   "--instruction", "Given a query, retrieve passages")
        assert len(s.log) == 4 * 2 + 4 * 3  # the duplicate record's questions were asked once (in flight together)
    assert ext["written"] == 8 and ext["duplicates_dropped"] == 2
    e = read_jsonl(tmp_path / "e.jsonl")
    assert all(len(r["pos"]) == 1 and len(r["neg"]) == 1 and r["source"]["mode"] for r in e)
    assert hn["written"] == 4 and hn["duplicates_dropped"] == 1
    h = read_jsonl(tmp_path / "h.jsonl")
    assert all(len(r["neg"]) == 3 and len(set(r["source"]["modes"])) == 3 for r in h)
    assert h[0]["query"] == rows[0]["query"] and h[0]["instruction"] == "Given a query, retrieve passages"


def test_queries_from_documents(tmp_path, capsys):
    docs = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "d1", "body": "The Eiffel Tower in Paris was completed in 1889 and is 330 metres tall."},
        {"id": "d2", "body": "巴黎是法国的首都和最大的城市，位于塞纳河畔。"}])
    with StubServer() as s:
        summary = synth(capsys, s.url, "queries", docs, tmp_path / "q.jsonl", "--field", "body",
                        "--languages", "English,Chinese", "--lengths", "4-8")
        assert summary["this_run"]["http_requests"] == 4  # configuration + generation per document
        random = synth(capsys, s.url, "queries", docs, tmp_path / "q2.jsonl", "--field", "body", "--config", "random")
        assert random["this_run"]["http_requests"] == 2
    rows = read_jsonl(tmp_path / "q.jsonl")
    assert [r["pos"] for r in rows] == [[json.loads(line)["body"]] for line in docs.read_text().splitlines()]
    src = rows[0]["source"]
    assert src["question_type"] in ("keywords", "acquire_knowledge", "summary", "yes_or_no", "background")
    assert src["difficulty"] in ("high_school", "university", "phd") and src["language"] in ("English", "Chinese")
    assert 4 <= src["length"] <= 8 and src["record"] == "d1" and src["persona"]
