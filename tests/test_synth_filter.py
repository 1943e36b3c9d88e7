"""`qzhou filter`: pairs an embedder scores below the threshold are dropped, scores match a direct encode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
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


def test_filter_scores_by_cosine_for_a_folder_without_a_normalize_module(tmp_path, base_dirs, capsys):
    from qzhou import Embedder

    e = Embedder.load(base_dirs["bert"], dtype="float32", normalize=False)
    folder = e.save(tmp_path / "raw")
    assert "Normalize" not in (folder / "modules.json").read_text()
    assert not Embedder.load(folder).config.normalize  # loaded as a sentence-transformers folder would be
    pairs = [("the cat runs", "a cat runs over the road"), ("the cat runs", "music and art"),
             ("paris is the capital of france", "the river in paris"), ("a red car", "the blue tree on the road")]
    write_jsonl(tmp_path / "s.jsonl", [{"query": q, "pos": [p]} for q, p in pairs])
    q = e.encode([q for q, _ in pairs], prompt_name="query")
    d = e.encode([p for _, p in pairs], prompt_name="document")
    assert np.linalg.norm(d, axis=1).min() > 2  # raw dot products would be far above any cosine threshold
    cosines = [sum(a * b for a, b in zip(x.tolist(), y.tolist())) / math.sqrt(sum(a * a for a in x.tolist()))
               / math.sqrt(sum(b * b for b in y.tolist())) for x, y in zip(q, d)]  # by hand
    threshold = float(np.median(cosines))
    assert qzhou(["filter", "--model", folder, "--input", tmp_path / "s.jsonl", "--output", tmp_path / "f.jsonl",
                  "--threshold", str(threshold), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    kept = {(r["query"], r["pos"][0]) for r in read_jsonl(tmp_path / "f.jsonl")}
    assert kept == {pair for pair, c in zip(pairs, cosines) if c >= threshold} and summary["kept"] == 2
    dropped = read_jsonl(tmp_path / "f.jsonl.dropped.jsonl")
    assert sorted(s for r in dropped for s in r["scores"]) == pytest.approx(sorted(cosines)[:2], abs=1e-4)
