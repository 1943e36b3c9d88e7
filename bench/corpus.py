"""Corpus-scale encoding and mining (issue 15): engines, memory, IVF-PQ vs exact, and a paper estimate.

Model: a random 2-layer Qwen2 (hidden 128, 4 heads) with a word-level tokenizer over 2,000 generated words,
built here from config. It is tiny on purpose: on a shared 2-core CPU a real model (SmolLM2-135M) encodes only
tens of short passages per second, so a 1M-row corpus would take hours; with the tiny model the figures measure
the pipeline (reading, tokenizing, batching, writing shards, scheduling), which is what the engines add.
Passages: 12-48 generated words each, ids p0, p1, ...

Measured in one run, each encode a fresh `python -m qzhou.cli encode ... --output DIR/` subprocess:
* rows/s of `local` with one process (the baseline; the large peak-RSS run), one process limited to one thread
  (OMP_NUM_THREADS=1), and 2 worker processes (`--devices cpu,cpu`, one thread each);
* the `ray` engine (local Ray, one actor) against the same one-process baseline: overhead = 1 - ray / local;
* peak RSS (the subprocess's ru_maxrss) of the one-process engine at two corpus sizes: flat when streaming;
* mining search: IVF-PQ (+ 8-bit refine) vs exact over shards of generated clustered vectors: search time ratio
  and recall@100 vs exact (index build time reported apart);
* a FLOPs-based paper estimate (no GPU was measured here) for 100M passages with 0.6B and 7B embedders.

Rows/s are rows / the engine's wall time as the manifest records it (model loading in the workers included, the
parent's Python start-up not). Results: bench/results/corpus.json.

Run:  python bench/corpus.py [--small 3000] [--large 12000] [--mine-rows 1000000] [--queries 1000] [--only mine]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "corpus.json"


def build_model(folder: Path, vocab_words: int = 2000) -> list[str]:
    """A random Qwen2 embedder base (2 layers, hidden 128) and a word-level tokenizer; returns the words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    words = [f"w{i}" for i in range(vocab_words)]
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_end|>", "<unk>", *words, *"abcdefghijklmnopqrstuvwxyz.,:?!"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<unk>",
                                   pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = Qwen2Model(Qwen2Config(vocab_size=len(vocab), hidden_size=128, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return words


def write_passages(path: Path, n: int, words: list[str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(12, 49, n)
    picks = rng.integers(0, len(words), int(lengths.sum()))
    with path.open("w", encoding="utf-8") as f:
        pos = 0
        for i, length in enumerate(lengths):
            text = " ".join(words[j] for j in picks[pos:pos + length]) + "."
            pos += length
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    return path


def shard_rows(corpus: Path) -> int:
    """20 shards per corpus: enough for 2 workers to share evenly, few enough to keep per-shard cost small."""
    with corpus.open("rb") as f:
        return max(500, sum(1 for _ in f) // 20)


def encode_cmd(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    """`qzhou encode ... --output OUT/` as every contender runs it (a fresh process)."""
    return [sys.executable, "-m", "qzhou.cli", "encode", str(model), "--input", str(corpus), "--id-field", "id",
            "--output", f"{out}/", "--dtype", "float32", "--shard-rows", str(shard_rows(corpus)), "--quiet", *extra]


def run_encode(model: Path, corpus: Path, out: Path, *extra: str, env: dict | None = None) -> dict:
    """One CLI run in a fresh process: its summary's figures and the process's total wall time."""
    cmd = encode_cmd(model, corpus, out, *extra)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"rows": summary["rows_encoded"], "engine_seconds": summary["seconds"], "rows_per_s": summary["rows_per_s"],
            "process_wall_seconds": round(time.perf_counter() - started, 2), "workers": summary["workers"]}


def peak_rss(model: Path, corpus: Path, out: Path) -> dict:
    """Peak RSS of the one-process engine: the child's own ru_maxrss, read with wait4."""
    cmd = encode_cmd(model, corpus, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(cmd)} failed (status {status})")
    summary = json.loads(stdout[stdout.index(b"{"):])
    return {"rows": summary["rows_encoded"], "rows_per_s": summary["rows_per_s"], "engine_seconds": summary["seconds"],
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "workers": summary["workers"]}


def write_vectors(folder: Path, rows: int, dim: int, centers: np.ndarray, seed: int) -> list[str]:
    """Clustered vectors (2000 random centres + noise) in 100k-row shards."""
    from qzhou.corpus.shards import write_shard

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, start in enumerate(range(0, rows, 100_000)):
        n = min(100_000, rows - start)
        x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        names.append(f"part{i}.parquet")
        write_shard(folder / names[-1], [str(j) for j in range(start, start + n)], x)
    return names


SEARCH_RSS = """
import sys, numpy as np
from pathlib import Path
from qzhou.corpus.index import ShardIndex
folder, rows, dim, names = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
q = np.random.default_rng(1).standard_normal((1000, dim)).astype(np.float32)
ShardIndex(folder, names, rows, dim, "exact", progress=False).search(q, 100)
"""


def search_rss(folder: Path, rows: int, dim: int, names: list[str]) -> int:
    """Peak RSS (MiB) of a fresh process running exact search over the folder: one shard resident at a time."""
    proc = subprocess.Popen([sys.executable, "-c", SEARCH_RSS, str(folder), str(rows), str(dim), *names])
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"exact search over {folder} failed (status {status})")
    return round(usage.ru_maxrss / 1024)


def bench_mining(rows: int, small_rows: int, queries: int, dim: int, tmp: Path) -> dict:
    """IVF-PQ vs exact over `rows` vectors (search time, recall@100), and exact search's peak RSS at two sizes."""
    from qzhou.corpus.index import ShardIndex

    centers = np.random.default_rng(0).standard_normal((2000, dim)).astype(np.float32)
    names = write_vectors(tmp / "vectors", rows, dim, centers, 1)
    small_names = write_vectors(tmp / "vectors-small", small_rows, dim, centers, 2)
    out = {"corpus_rows": rows, "queries": queries, "dim": dim,
           "exact_search_peak_rss_mib": {str(small_rows): search_rss(tmp / "vectors-small", small_rows, dim,
                                                                      small_names),
                                         str(rows): search_rss(tmp / "vectors", rows, dim, names)},
           "corpus_vectors_mib": round(rows * dim * 4 / 2**20)}
    rng = np.random.default_rng(3)
    q = centers[rng.integers(0, 2000, queries)] + 0.7 * rng.standard_normal((queries, dim)).astype(np.float32)
    exact = ShardIndex(tmp / "vectors", names, rows, dim, "exact", progress=False)
    t = time.perf_counter()
    _, want = exact.search(q, 100)
    out["exact_search_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    ivf = ShardIndex(tmp / "vectors", names, rows, dim, "ivfpq", progress=False)
    out["ivfpq_build_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    _, got = ivf.search(q, 100)
    out["ivfpq_search_seconds"] = round(time.perf_counter() - t, 2)
    out["ivfpq_speedup_vs_exact"] = round(out["exact_search_seconds"] / out["ivfpq_search_seconds"], 1)
    out["ivfpq_recall_at_100"] = round(float(np.mean([len(set(g) & set(w)) / 100
                                                      for g, w in zip(got.tolist(), want.tolist())])), 4)
    out["ivfpq_params"] = {"nlist": ivf.nlist, "pq_m": ivf.pq_m, "nprobe": 128, "refine": "SQ8 x8"}
    return out


def paper_estimate(passages: float = 100e6, tokens_per_passage: int = 256, mfu: float = 0.4,
                   peak_tflops: float = 989.0) -> dict:
    """Forward FLOPs ~= 2 * parameters * tokens (+ attention 4 * layers * hidden * tokens * length, small here);
    H100 SXM dense bf16 peak 989 TFLOP/s at an assumed 40% utilisation (packed token-budget batches)."""
    tokens = passages * tokens_per_passage
    models = {"0.6B (Qwen3-Embedding-0.6B: 28 layers, hidden 1024)": (0.6e9, 28, 1024),
              "7B (QZhou-Embedding / Qwen2.5-7B: 28 layers, hidden 3584)": (7.6e9, 28, 3584)}
    out = {"assumptions": {"passages": passages, "tokens_per_passage": tokens_per_passage, "gpu": "H100 SXM",
                           "peak_bf16_tflops": peak_tflops, "mfu": mfu, "basis": "FLOPs (no GPU measured here)"}}
    for name, (params, layers, hidden) in models.items():
        flops = 2 * params * tokens + 4 * layers * hidden * tokens * tokens_per_passage
        gpu_hours = flops / (peak_tflops * 1e12 * mfu) / 3600
        out[name] = {"flops": f"{flops:.2e}", "gpu_hours": round(gpu_hours, 1),
                     "hours_on_8_gpus": round(gpu_hours / 8, 1), "gpus_for_24h": int(np.ceil(gpu_hours / 24))}
    return out


def bench_encode(a, tmp: Path) -> dict:
    words = build_model(tmp / "model")
    small = write_passages(tmp / "small.jsonl", a.small, words)
    large = write_passages(tmp / "large.jsonl", a.large, words)
    rss = {"small": peak_rss(tmp / "model", small, tmp / "rss-small"),
           "large": peak_rss(tmp / "model", large, tmp / "rss-large")}
    one = rss["large"]  # the one-process baseline is the large RSS run (same command)
    # a tiny model on loaded cores: one thread per process beats two intra-op threads, so both baselines
    one_t1 = run_encode(tmp / "model", large, tmp / "one-t1", env={"OMP_NUM_THREADS": "1"})
    two = run_encode(tmp / "model", large, tmp / "two", "--devices", "cpu,cpu")
    out = {"rows": a.large, "peak_rss_one_process": rss,
           "peak_rss_ratio_large_vs_small": round(rss["large"]["peak_rss_mib"] / rss["small"]["peak_rss_mib"], 2),
           "local_1_process": one, "local_1_process_1_thread": one_t1, "local_2_workers": two,
           "local_2_workers_vs_1": round(two["rows_per_s"] / one["rows_per_s"], 2),
           "local_2_workers_vs_1_process_1_thread": round(two["rows_per_s"] / one_t1["rows_per_s"], 2)}
    if not a.skip_ray:
        ray = run_encode(tmp / "model", large, tmp / "ray", "--engine", "ray", "--concurrency", "1")
        out["ray_1_actor"] = ray
        out["ray_overhead_vs_local_1_process"] = round(1 - ray["rows_per_s"] / one["rows_per_s"], 3)
        out["ray_actor_vs_local_1_process_1_thread"] = round(ray["workers"][0]["rows_per_s"] / one_t1["rows_per_s"], 2)
        out["ray_fixed_seconds"] = round(ray["engine_seconds"] - ray["workers"][0]["seconds"], 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=3000, help="passages of the small encode (peak RSS)")
    ap.add_argument("--large", type=int, default=12000, help="passages of the large encode and the engine runs")
    ap.add_argument("--mine-rows", type=int, default=1_000_000)
    ap.add_argument("--mine-small-rows", type=int, default=200_000, help="the second size for search RSS")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--only", choices=["all", "encode", "mine"], default="all",
                    help="run one part; the other part's figures already in the results file are kept")
    ap.add_argument("--skip-ray", action="store_true")
    a = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() and a.only != "all" else {}
    results.update({"model": "random Qwen2, 2 layers, hidden 128, word-level tokenizer (pipeline-bound)",
                    "cpu_count": os.cpu_count()})
    with tempfile.TemporaryDirectory() as tmp:
        if a.only in ("all", "encode"):
            results["encode_load_average_at_start"] = os.getloadavg()
            results["encode"] = bench_encode(a, Path(tmp))
        if a.only in ("all", "mine"):
            results["mining_load_average_at_start"] = os.getloadavg()
            results["mining"] = bench_mining(a.mine_rows, a.mine_small_rows, a.queries, a.dim, Path(tmp))
    results["paper_estimate_100M_passages"] = paper_estimate()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
