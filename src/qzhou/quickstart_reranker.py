"""The reranker step of `qzhou quickstart` (issue 11): after the embedder, SmolLM2-135M is trained as a Qwen3-format
yes/no reranker with `resources/quickstart/reranker-cpu.yaml` and reorders the trained embedder's top 10 of each
sample query. The untrained reranker (the same base, no training) reorders the same lists, so the report shows what
the training itself adds. Two-stage search is how a reranker is used: the embedder finds candidates cheaply, the
reranker reads each (query, passage) pair together, which an embedder never does.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from qzhou.evaluation.metrics import retrieval_scores
from qzhou.quickstart import INSTRUCTION, METRICS, Stages, resource, sample_task, train_recipe_in
from qzhou.reranking.model import Reranker

DEPTH = 10  # first-stage hits each query's reranker reorders (the metrics are @10, so all of them count)
LEGEND = "(* = a passage judged relevant; embedder: cosine similarity, reranker: p(yes))"


def recipe_file() -> Path:
    return resource("quickstart/reranker-cpu.yaml")


def load_config(overrides: list[str]):
    """The reranker recipe with `--reranker-set` overrides (read before any work, so a bad value fails at once)."""
    from qzhou.training.recipe import load_recipe

    return load_recipe(recipe_file(), overrides)


def rerank(reranker: Reranker, first: dict, k: int = 3) -> dict:
    """Each query's first-stage top `DEPTH` (`first["searches"][i]["ranked"]`) reordered by the reranker's log-odds,
    scored like the first stage (nDCG@10 / MRR@10 / top-1 over the reordered lists), with the top-k hits shown.
    Passages outside the first stage's top `DEPTH` stay out: a reranker can only reorder what it is given."""
    corpus, queries = sample_task()
    texts = {c["id"]: c["text"] for c in corpus}
    searches = first["searches"]
    pairs = [(s["query"], texts[d]) for s in searches for d in s["ranked"]]
    # prefix cache with a 4,096-token budget: these 160 pairs (SmolLM2, fp32, one process, busy machine) took 65 s
    # and 1.33 GB peak RSS on the plain forward, 25 s and 2.05 GB with the cache at the default 16,384-token budget
    # (every layer's keys and values of a batch are held at once), 16 s and 1.28 GB at 4,096 (same scores)
    p_yes, log_odds = reranker.score(pairs, instruction=INSTRUCTION, return_logits=True, show_progress=True,
                                     batch_tokens=4096)
    run, out, start = {}, [], 0
    for query, s in zip(queries, searches):
        ids = s["ranked"]
        z, p = log_odds[start:start + len(ids)], p_yes[start:start + len(ids)]
        start += len(ids)
        order = sorted(range(len(ids)), key=lambda i: -z[i])  # log-odds: they still separate p(yes) near 1.0
        run[query["id"]] = {ids[i]: float(z[i]) for i in order}
        out.append({"query": s["query"], "relevant": s["relevant"], "ranked": [ids[i] for i in order],
                    "hits": [{"id": ids[i], "score": round(float(p[i]), 4), "text": texts[ids[i]]}
                             for i in order[:k]]})
    qrels = {x["id"]: {r: 1 for r in x["relevant"]} for x in queries}
    scores = retrieval_scores(run, qrels, k_values=(1, 10))
    return {"scores": {name: round(100 * scores[key], 2) for name, key in METRICS.items()}, "searches": out}


def _rerank_with(source: Path | str, first: dict, k: int, dtype: str, device: str | None) -> dict:
    reranker = Reranker.load(source, dtype=dtype, device=device)
    started = time.perf_counter()
    result = rerank(reranker, first, k)
    result["seconds"] = round(time.perf_counter() - started, 1)
    del reranker
    gc.collect()
    return result


def run_stage(cfg, out: Path, first: dict, stages: Stages, k: int = 3, dtype: str = "float32",
              device: str | None = None) -> dict:
    """Untrained reranker over `first`'s top lists, training, trained reranker over the same lists: the report's
    `reranker` part (the recipe, the model folder, the minutes of the whole step and of training, both results)."""
    started = time.perf_counter()
    stages.next(f"reranking the trained embedder's top {DEPTH} with the untrained reranker (SmolLM2-135M, yes/no)")
    untrained = _rerank_with(cfg.model.base, first, k, dtype, device)
    final, train = train_recipe_in(cfg, out / "reranker-train", recipe_file(), stages)
    stages.next(f"reranking the trained embedder's top {DEPTH} with the trained reranker")
    trained = _rerank_with(final, first, k, dtype, device)
    return {**train, "depth": DEPTH, "step_minutes": round((time.perf_counter() - started) / 60, 2),
            "untrained": untrained, "trained": trained}


def _changed_first(first: dict, reranked: dict) -> list[int]:
    """Query indices, those whose shown hits the reranker changed first (they are what a user wants to see)."""
    def ids(s):
        return [h["id"] for h in s["hits"]]
    pairs = list(zip(first["searches"], reranked["searches"]))
    return sorted(range(len(pairs)), key=lambda i: ids(pairs[i][0]) == ids(pairs[i][1]))


def print_before_after(first: dict, reranked: dict, limit: int = 4) -> None:
    """A few searches, the embedder's hits and then the reranker's order of the same candidates."""
    k = len(first["searches"][0]["hits"]) if first["searches"] else 0
    print(f"\nsearches before / after reranking, top {k} hits {LEGEND}")
    for i in _changed_first(first, reranked)[:limit]:
        s = first["searches"][i]
        print(f"\n{s['query']}")
        for label, result in (("embedder", first), ("reranked", reranked)):
            print(f"  {label}:")
            for h in result["searches"][i]["hits"]:
                mark = "*" if h["id"] in s["relevant"] else " "
                print(f"   {mark}{h['score']:.3f}  {h['text']}")
