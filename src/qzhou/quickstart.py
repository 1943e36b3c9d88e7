"""The README's main job: the real SmolLM2-135M made a bidirectional mean-pooling embedder, saved, and used
for a semantic search over the sample corpus shipped with qzhou (queries get the retrieval instruction)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from qzhou.default_model import smollm2_folder
from qzhou.modeling.embedder import Embedder
from qzhou.search import top_k
from qzhou.textio import read_texts


def sample_files() -> tuple[Path, Path]:
    root = resources.files("qzhou") / "resources"
    return Path(str(root / "sample_corpus.jsonl")), Path(str(root / "sample_queries.txt"))


def run(out: Path, dtype: str = "auto", k: int = 3) -> dict:
    base = smollm2_folder()
    embedder = Embedder.load(base, attention="bidirectional", pooling="mean", dtype=dtype)
    model_dir = embedder.save(out / "embedder")
    print(f"embedder: {model_dir}  ({embedder.info()['parameters'] / 1e6:.0f}M parameters, "
          f"{embedder.config.attention}, {embedder.config.pooling} pooling, {embedder.dtype})")
    corpus_file, queries_file = sample_files()
    docs = read_texts(corpus_file)
    queries = read_texts(queries_file)
    d = embedder.encode(docs, prompt_name="document")
    q = embedder.encode(queries, prompt_name="query")
    scores, idx = top_k(q, d, k)
    results = []
    for qi, query in enumerate(queries):
        print(f"\n{query}")
        hits = [{"score": round(float(s), 4), "text": docs[j]} for s, j in zip(scores[qi], idx[qi], strict=False)]
        for h in hits:
            print(f"  {h['score']:.3f}  {h['text']}")
        results.append({"query": query, "hits": hits})
    report = {"model": str(model_dir), "results": results}
    (out / "search.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nresults: {out / 'search.json'}")
    print("(an untrained embedder: the search shows the pipeline; `qzhou train` makes it good)")
    return report
