"""`qzhou filter`: pairs an embedder scores below the threshold are dropped, scores match a direct encode."""

from __future__ import annotations

import json

import numpy as np
from synth_helpers import qzhou, read_jsonl, write_jsonl


def test_filter_drops_low_scoring_pairs(tmp_path, base_dirs, capsys):
    from qzhou import Embedder

    e = Embedder.load(base_dirs["bert"], dtype="float32")
    folder = e.save(tmp_path / "emb")
    rows = [{"query": "the cat runs", "pos": ["a cat runs over the road", "music and art"]},
            {"query": "paris is the capital of france", "pos": ["the river in paris"]},
            {"text1": "a dog", "text2": "the dog", "score": 4.0}]
    write_jsonl(tmp_path / "s.jsonl", rows)
    q = e.encode(["the cat runs", "the cat runs", "paris is the capital of france"], prompt_name="query")
    d = e.encode(["a cat runs over the road", "music and art", "the river in paris"])
    scores = (q * d).sum(1)
    threshold = float(np.sort(scores)[1]) - 1e-4  # keeps the two best of the three pairs
    assert qzhou(["filter", "--model", folder, "--input", tmp_path / "s.jsonl", "--output", tmp_path / "f.jsonl",
                  "--threshold", str(threshold), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["positives_dropped"] == 1 and summary["passed_unscored"] == 1
    kept = read_jsonl(tmp_path / "f.jsonl")
    kept_pairs = {(r["query"], p) for r in kept if "query" in r for p in r["pos"]}
    expected = {pair for pair, s in zip([("the cat runs", "a cat runs over the road"), ("the cat runs", "music and art"),
                                         ("paris is the capital of france", "the river in paris")], scores)
                if s >= threshold}
    assert kept_pairs == expected and kept[-1] == rows[2]
    dropped = read_jsonl(tmp_path / "f.jsonl.dropped.jsonl")
    assert summary["dropped"] == len(dropped) and summary["kept"] + summary["dropped"] == 2
