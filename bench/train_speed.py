"""Training throughput: qzhou's trainer against sentence-transformers' trainer with MultipleNegativesRankingLoss.

Both train the same SmolLM2-135M (mean pooling, causal attention unless --attention bidirectional for qzhou; ST
cannot make a decoder bidirectional), in one process with the same torch threads, on the same SNLI triplets
(out/bench-data/clean/snli.jsonl: query/pos/neg records), with the same batch size B, max length L (queries and
passages), precision, lr 2e-5 without warmup, AdamW and grad-norm clip 1.0. Each step embeds B queries +
B positives + B hard negatives, tokenized as raw text (ST's Transformer is pinned to its text modality: ST 6
would otherwise render every text through the Instruct model's chat template, system prompt included).

* qzhou: `qzhou.training.trainer.train` on a one-stage recipe, QZhou InfoNCE (in-batch + hard negatives +
  query-query negatives), hard_negatives 1. Its losses.jsonl gives per step the real (non-pad) tokens embedded
  and the wall time, which covers sampling, tokenization, forward, backward and the optimizer step.
* sentence-transformers: `SentenceTransformerTrainer`, MNRL (anchor/positive/negative = query/first pos/first
  neg), NO_DUPLICATES batches. Real tokens are counted in a wrapped data collator (attention masks of every
  column); a step's time is on_step_begin -> on_step_end of a TrainerCallback plus the collator's time for that
  batch (HF Trainer tokenizes before on_step_begin; qzhou's step time includes its tokenization).

tokens/s = sum(tokens) / sum(seconds) over the steps after --warmup, in --rounds runs per contender in ABBA order.
Computed tokens count padding too (what the model really ran: for ST the anchors' forward plus one forward over
the merged candidate columns); their rate separates speed from how much padding each side's batches happen to get. The compute dtype column is the output dtype
of the first nn.Linear run with grad enabled (bfloat16 = the CPU bf16 autocast is really on).
Target: qzhou tokens/s >= 1.0x sentence-transformers MNRL tokens/s.

Run:  python bench/train_speed.py [--steps 12] [--warmup 2] [--batch 32] [--max-length 64]
                                  [--precision bf16-mixed|fp32] [--attention causal|bidirectional] [--threads N]
                                  [--rounds 2] [--device cpu|cuda] [--base FOLDER] [--length-buckets 4 [1 ...]]
                                  [--out bench/results/train_speed.json]
--base: another model folder of the same shape (e.g. SmolLM2's config with random weights on a GPU machine, where
the real weights are not at hand); throughput does not depend on the weights' values.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: made by bench/prepare_cpu_data.sh (+ `qzhou data validate --clean`); a worktree falls back to the main checkout's
DATA = next((p for p in (REPO / "out/bench-data/clean/snli.jsonl", REPO.parent / "main/out/bench-data/clean/snli.jsonl")
             if p.is_file()), REPO / "out/bench-data/clean/snli.jsonl")
TARGET = 1.0


def dtype_probe(seen: list[str]):
    """A global forward hook noting the output dtype of the first training nn.Linear (autocast check)."""
    def hook(module, args, output):
        if not seen and isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.append(str(output.dtype).removeprefix("torch."))
    return torch.nn.modules.module.register_module_forward_hook(hook)


def summarize(name: str, tokens: list[int], seconds: list[float], warmup: int, dtype: list[str],
              padded: list[int]) -> dict:
    tokens, seconds, padded = tokens[warmup:], seconds[warmup:], padded[warmup:]
    if not seconds:
        raise SystemExit(f"{name}: no steps left after --warmup {warmup}")
    return dict(contender=name, steps=len(seconds), tokens=sum(tokens), padded_tokens=sum(padded), seconds=sum(seconds),
                tokens_per_s=sum(tokens) / sum(seconds), compute_dtype=dtype[0] if dtype else "?",
                threads=torch.get_num_threads(), step_seconds=[round(s, 4) for s in seconds])


def run_qzhou(args, data: Path, tmp: Path, buckets: int) -> dict:
    from qzhou.training.recipe import TrainConfig
    from qzhou.training.trainer import train

    cfg = TrainConfig(
        model={"base": str(args.base) if args.base else "default", "attention": args.attention, "pooling": "mean"},
        datasets=[{"name": "snli", "path": data, "task": "retrieval"}],
        stages=[{"name": "bench", "datasets": ["snli"], "steps": args.steps, "lr": 2e-5, "warmup_steps": 0}],
        output_dir=tmp / "qzhou", precision=args.precision, retrieval_loss="qzhou", hard_negatives=1,
        batch_size={"retrieval": args.batch}, query_max_length=args.max_length,
        passage_max_length=args.max_length, checkpoint_every=0, log_every=max(1, args.steps), length_buckets=buckets)
    seen: list[str] = []
    handle = dtype_probe(seen)
    try:
        train(cfg)
    finally:
        handle.remove()
    rows = [json.loads(x) for x in (cfg.output_dir / "bench" / "losses.jsonl").read_text().splitlines()]
    if not rows or "tokens" not in rows[0] or "seconds" not in rows[0]:
        raise SystemExit("qzhou's losses.jsonl has no per-step 'tokens' / 'seconds': this trainer predates them")
    return summarize(f"qzhou InfoNCE ({args.attention}), {buckets} length bucket{'s' if buckets > 1 else ''}", [r["tokens"] for r in rows],
                     [r["seconds"] for r in rows], args.warmup, seen, [r["padded_tokens"] for r in rows])


def run_st(args, folder: Path, data: Path, tmp: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
    from transformers import AutoTokenizer, TrainerCallback

    from qzhou.modeling.loading import detect_config, prepare_tokenizer, read_raw_config

    # text modality only: ST 6 otherwise renders every text through the Instruct model's chat template (system
    # prompt included), which qzhou does not do
    text_only = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
    transformer = Transformer(str(folder), max_seq_length=args.max_length, model_kwargs={"dtype": torch.float32},
                              modality_config=text_only, module_output_name="token_embeddings")
    # tokenizer set up as qzhou's Embedder does for this folder (padding side, pad token), cut at L
    config = detect_config(folder, read_raw_config(folder, None)).model_copy(
        update={"pooling": "mean", "append_token": None, "max_length": args.max_length})
    prepare_tokenizer(transformer.tokenizer, config)
    records = [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines() if x.strip()]
    records = [r for r in records if r.get("neg")]
    sample = [r["query"] for r in records[:16]]
    plain = AutoTokenizer.from_pretrained(folder)(sample, truncation=True, max_length=args.max_length)["input_ids"]
    if transformer.preprocess(sample)["attention_mask"].sum(1).tolist() != [len(x) for x in plain]:
        raise SystemExit("sentence-transformers does not tokenize texts as the plain tokenizer does (template?)")
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                                device=args.device)
    train_set = Dataset.from_dict({"anchor": [r["query"] for r in records], "positive": [r["pos"][0] for r in records],
                                   "negative": [r["neg"][0] for r in records]})

    batches: list[tuple[int, float]] = []  # per collated batch: (real tokens, seconds to tokenize)
    steps: list[float] = []  # per step: on_step_begin -> on_step_end seconds

    class CountingCollator(SentenceTransformerDataCollator):
        def __call__(self, features):
            t0 = time.perf_counter()
            batch = super().__call__(features)
            masks = [v for k, v in batch.items() if k.endswith("_attention_mask")]  # anchor, positive, negative
            real = sum(int(m.sum()) for m in masks)
            # computed: the anchors' own forward + one forward over the candidate columns padded to their widest
            # (sentence-transformers 6 merges a loss's candidate columns)
            padded = masks[0].numel() + sum(m.shape[0] for m in masks[1:]) * max(m.shape[1] for m in masks[1:])
            batches.append((real, time.perf_counter() - t0, padded))
            return batch

    class StepTimer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            if args.device == "cuda":  # the step's kernels finished (qzhou's loss.item() syncs likewise)
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - self.t0)

    bf16 = args.precision == "bf16-mixed"
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(tmp / "st"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=2e-5, warmup_steps=0, bf16=bf16, use_cpu=args.device == "cpu", eval_strategy="no", save_strategy="no",
        report_to="none", dataloader_num_workers=0, batch_sampler=BatchSamplers.NO_DUPLICATES, seed=0,
        disable_tqdm=True, logging_steps=max(1, args.steps))
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=train_set,
                                         loss=MultipleNegativesRankingLoss(model),
                                         data_collator=CountingCollator(preprocess_fn=model.preprocess),
                                         callbacks=[StepTimer()])
    seen: list[str] = []
    handle = dtype_probe(seen)
    try:
        trainer.train()
    finally:
        handle.remove()
    tokens = [t for t, _, _ in batches[:len(steps)]]  # batch i is step i's (one batch per step, no accumulation)
    seconds = [s + c for s, (_, c, _) in zip(steps, batches)]
    padded = [p for _, _, p in batches[:len(steps)]]
    return summarize("sentence-transformers MNRL (causal)", tokens, seconds, args.warmup, seen, padded)


def pool(results: list[dict]) -> dict:
    """Rounds of one contender -> one row: tokens and seconds summed over rounds."""
    row = dict(results[0])
    for key in ("steps", "tokens", "padded_tokens", "seconds"):
        row[key] = sum(r[key] for r in results)
    row["tokens_per_s"] = row["tokens"] / row["seconds"]
    row["per_round_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in results]
    row["step_seconds"] = [s for r in results for s in r["step_seconds"]]
    return row


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
    ap.add_argument("--batch", type=int, default=32, help="queries per step (each with a positive and a negative)")
    ap.add_argument("--max-length", type=int, default=64, help="token cut for queries and passages")
    ap.add_argument("--precision", choices=["bf16-mixed", "fp32"], default="bf16-mixed")
    ap.add_argument("--attention", choices=["causal", "bidirectional"], default="causal", help="qzhou only")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=2, help="runs per contender, in ABBA order")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--base", type=Path, default=None, help="model folder (default: the SmolLM2-135M cache)")
    ap.add_argument("--length-buckets", type=int, nargs="+", default=[4],
                    help="qzhou contenders, one per value (the first is the verdict's): forwards per merged batch, "
                         "rows grouped by length; 1 = one forward per batch")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_speed.json")
    args = ap.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: not found (make it with bash bench/prepare_cpu_data.sh)")

    import sentence_transformers
    import transformers

    from qzhou.default_model import smollm2_folder

    torch.set_num_threads(args.threads)
    folder = args.base or smollm2_folder()
    names: list[int | None] = [None, *args.length_buckets]  # None: sentence-transformers; n: qzhou, n buckets
    runs: dict[int | None, list[dict]] = {k: [] for k in names}
    for r in range(args.rounds):  # ABBA order: ST, qzhou, then qzhou, ST: drift on a shared machine hits both
        for name in names if r % 2 == 0 else names[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(run_st(args, folder, args.data, Path(tmp)) if name is None
                                  else run_qzhou(args, args.data, Path(tmp), name))
    st, *qzs = (pool(runs[k]) for k in names)
    qz = qzs[0]
    for r in (st, *qzs):
        r["ratio_vs_st"] = r["tokens_per_s"] / st["tokens_per_s"]

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} threads, {cpu_name()}"
    print(f"\n### {folder.name}, B={args.batch}, L={args.max_length}, {args.precision}, {where}\n")
    for r in (st, *qzs):
        r["padded_tokens_per_s"] = r["padded_tokens"] / r["seconds"]
        r["padded_ratio_vs_st"] = r["padded_tokens_per_s"] / (st["padded_tokens"] / st["seconds"])
    print("| contender | steps timed | real tokens | computed tokens | seconds | tokens/s | per round | vs ST "
          "| computed tokens/s vs ST | compute dtype |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for r in (st, *qzs):
        rounds = " / ".join(f"{x:,.0f}" for x in r["per_round_tokens_per_s"])
        print(f"| {r['contender']} | {r['steps']} | {r['tokens']:,} | {r['padded_tokens']:,} | {r['seconds']:.2f} "
              f"| {r['tokens_per_s']:,.0f} | {rounds} | {r['ratio_vs_st']:.2f}x | {r['padded_ratio_vs_st']:.2f}x "
              f"| {r['compute_dtype']} |")
    ratio = qz["ratio_vs_st"]
    line = (f"{'PASS' if ratio >= TARGET else 'FAIL'} - qzhou tokens/s >= {TARGET}x sentence-transformers MNRL "
            f"(ratio {ratio:.2f}x)")
    print("\n" + line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "sentence-transformers": sentence_transformers.__version__}
    args.out.write_text(json.dumps(dict(settings=settings, versions=versions, cpu=cpu_name(), device=where,
                                        results=[st, *qzs], verdict=line), indent=2))


if __name__ == "__main__":
    main()
