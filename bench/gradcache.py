"""Benchmark GradCache (the packer's, `qzhou.training.packing.pack_and_embed` with `chunk_size`) against the plain
training step.

A step embeds 3 roles of `batch` SNLI texts (queries, positives, hard negatives, each truncated to --length tokens)
with an Embedder in train mode, takes the QZhou InfoNCE (`retrieval_loss`, tau 0.05) and backpropagates, one
forward per role (`merge=False`, as before the packer): plain = `Packing(merge=False)`, GradCache =
`Packing(merge=False, chunk_size=chunk)`. (Rows are no longer padded to --length: the packer pads each forward to
its longest row.)

1. Memory: GradCache at logical batch --big (512) in chunks of --chunk (32) vs plain at batch --chunk (and at --big
   with --with-plain-512); one step each, in a fresh subprocess (hidden --child mode). CPU: peak RSS of the step
   (ru_maxrss, reset via /proc/self/clear_refs once model and inputs are loaded; default glibc allocator) and the
   RSS before it; CUDA: max_memory_allocated / memory_allocated. Target: total peak <= 1.3x. (GradCache's graph holds
   --chunk rows of one group at a time; plain at batch --chunk holds 3 x --chunk rows.)
2. Time at equal batch: plain and GradCache steps alternate in one process at --time-batch (64), GradCache in chunks
   of --time-chunk (16); one warm-up each, then --repeats rounds; medians compared. Target: <= 1.35x.

--model small-random (default): a randomly initialised Llama (hidden 256, 4 layers, SmolLM2's tokenizer) where
activations dominate; the default run takes 1-2 min on 2 quiet CPU cores. --model smollm2: the real SmolLM2-135M
(bidirectional, mean pooling), ~30x the compute per token (tens of minutes at --big 512 on CPU). On a busy CPU
use --threads 1: with 2 threads competing for cores, GradCache's many small ops make timings erratic.

Run:  python bench/gradcache.py [--model small-random|smollm2] [--big 512] [--chunk 32] [--time-batch 64]
                                [--time-chunk 16] [--repeats 3] [--length 32] [--threads N] [--with-plain-512]
                                [--out bench/results/gradcache.json]
"""

from __future__ import annotations

import os

os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = [REPO / "out/bench-data/clean/snli.jsonl", REPO.parent / "main/out/bench-data/clean/snli.jsonl",
        REPO / "out/bench-data/snli.jsonl"]
TARGET_MEM, TARGET_TIME = 1.3, 1.35
MB = 2**20


def model_folder(name: str, tmp: str) -> Path:
    from qzhou.default_model import smollm2_folder

    if name == "smollm2":
        return smollm2_folder()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tok = AutoTokenizer.from_pretrained(smollm2_folder())
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return Path(tmp)


def setup(args, folder: Path, batch: int):
    """Embedder in train mode on 3 fixed-length groups of `batch` rows; `run(mode, chunk)` -> (seconds, loss)."""
    import torch

    from qzhou import Embedder
    from qzhou.training.objectives import LossConfig, Objective, retrieval_loss
    from qzhou.training.packing import Engine, Packing, pack_and_embed

    model = Embedder.load(folder, attention="bidirectional", pooling="mean", dtype="float32", device=args.device)
    model.train()
    with open(args.data, encoding="utf-8") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(batch))]
    if len(rows) < batch:
        sys.exit(f"{args.data} has only {len(rows)} records, {batch} needed")
    roles = {}
    for role, texts in (("q", [r["query"] for r in rows]), ("p", [r["pos"][0] for r in rows]),
                        ("n", [r["neg"][0] for r in rows])):
        roles[role] = model.tokenizer(texts, truncation=True, max_length=args.length)["input_ids"]
    cfg = LossConfig(tau=0.05)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    side, pad_id = Objective.padding(model)
    engine = Engine(device=model.device)

    def run(mode: str, chunk: int) -> tuple[float, float]:
        model.zero_grad()
        sync()
        t0 = time.perf_counter()
        packing = Packing(side, pad_id, merge=False, chunk_size=None if mode == "plain" else chunk)
        batch = pack_and_embed(roles, model, packing, engine)
        loss = retrieval_loss(cfg, batch.embeddings["q"], batch.embeddings["p"], batch.embeddings["n"])
        batch.backward(loss)
        sync()
        return time.perf_counter() - t0, float(loss.detach())

    return model, run


def child(args) -> None:
    """One step of one configuration in this fresh process; prints its memory as a JSON line."""
    import torch

    model, run = setup(args, Path(args.folder), args.batch)
    if model.device.type == "cuda":
        before, reset = torch.cuda.memory_allocated(), True
        torch.cuda.reset_peak_memory_stats()
        secs, loss = run(args.child, args.chunk)
        peak = torch.cuda.max_memory_allocated()
    else:
        try:  # "5" resets the peak RSS (VmHWM, and with it ru_maxrss) to the current RSS: loading stops counting
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        secs, loss = run(args.child, args.chunk)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(before_mb=before / MB, peak_mb=peak / MB, step_mb=(peak - before) / MB, seconds=secs,
                          loss=loss, peak_reset=reset)))


def measure_memory(args, folder: Path, mode: str, batch: int, chunk: int) -> dict:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--device", args.device, "--data", str(args.data), "--child", mode,
           "--folder", str(folder), "--batch", str(batch), "--chunk", str(chunk)]  # the last --chunk etc. win
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    name = f"plain {batch}" if mode == "plain" else f"GradCache {batch} in chunks of {chunk}"
    return dict(config=name, mode=mode, batch=batch, chunk=chunk, **json.loads(proc.stdout.strip().splitlines()[-1]))


def measure_time(args, folder: Path) -> dict:
    model, run = setup(args, folder, args.time_batch)
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "gradcache": []}
    for i in range(args.repeats + 1):  # round 0 is the warm-up
        for mode in runs:
            result = run(mode, args.time_chunk)
            if i:
                runs[mode].append(result)
    med = {m: statistics.median(s for s, _ in r) for m, r in runs.items()}
    return dict(parameters=sum(p.numel() for p in model.parameters()), batch=args.time_batch, chunk=args.time_chunk,
                median_s=med, ratio=med["gradcache"] / med["plain"],
                runs_s={m: [s for s, _ in r] for m, r in runs.items()},
                loss_diff=max(abs(a[1] - b[1]) for a, b in zip(runs["plain"], runs["gradcache"])))


def environment(args, folder: Path) -> dict:
    import torch
    import transformers

    c = json.loads((folder / "config.json").read_text())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    return dict(model=f"{args.model} ({c['model_type']}, hidden {c['hidden_size']}, {c['num_hidden_layers']} layers)",
                device=args.device, cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if args.device == "cuda" else None, python=platform.python_version(),
                torch=torch.__version__, transformers=transformers.__version__)


def report(memory: list[dict], t: dict, unit: str) -> tuple[float, float, list[str]]:
    print(f"\n### Memory: one step, each in a fresh process ({unit}, MB)\n")
    print("| configuration | before step | peak | step increment | step s | loss |\n|---|---:|---:|---:|---:|---:|")
    for r in memory:
        print(f"| {r['config']} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | {r['step_mb']:.0f} | {r['seconds']:.2f} "
              f"| {r['loss']:.4f} |")
    base, gc = memory[0], memory[1]
    mem, inc = gc["peak_mb"] / base["peak_mb"], gc["step_mb"] / max(base["step_mb"], 1e-9)
    print(f"\n### Time at equal batch {t['batch']} (GradCache in chunks of {t['chunk']}), {len(t['runs_s']['plain'])} "
          f"rounds after a warm-up\n\n| contender | median s | runs s | vs plain |\n|---|---:|---:|---:|")
    for m, name in (("plain", f"plain {t['batch']}"), ("gradcache", f"GradCache {t['batch']}/{t['chunk']}")):
        runs = ", ".join(f"{s:.2f}" for s in t["runs_s"][m])
        print(f"| {name} | {t['median_s'][m]:.2f} | {runs} | {t['median_s'][m] / t['median_s']['plain']:.2f}x |")
    verdicts = [
        f"{'PASS' if mem <= TARGET_MEM else 'FAIL'} - memory: {gc['config']} peaks at {gc['peak_mb']:.0f} MB = "
        f"{mem:.2f}x plain {base['batch']} ({base['peak_mb']:.0f} MB; target <= {TARGET_MEM}x); step increment "
        f"{inc:.2f}x ({gc['step_mb']:.0f} vs {base['step_mb']:.0f} MB)",
        f"{'PASS' if t['ratio'] <= TARGET_TIME else 'FAIL'} - time: GradCache {t['batch']} in chunks of {t['chunk']} "
        f"takes {t['ratio']:.2f}x plain {t['batch']} (median {t['median_s']['gradcache']:.2f} s vs "
        f"{t['median_s']['plain']:.2f} s; target <= {TARGET_TIME}x; max loss difference {t['loss_diff']:.1e})"]
    if not all(r["peak_reset"] for r in memory):
        verdicts.append("note: the peak RSS could not be reset; peaks include model loading")
    print("\n" + "\n".join(verdicts))
    return mem, inc, verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["small-random", "smollm2"], default="small-random")
    ap.add_argument("--big", type=int, default=512, help="logical batch of the GradCache memory run")
    ap.add_argument("--chunk", type=int, default=32, help="its GradCache chunk, also the plain baseline's batch")
    ap.add_argument("--time-batch", type=int, default=64, help="batch of the equal-batch time comparison")
    ap.add_argument("--time-chunk", type=int, default=16, help="GradCache chunk of the time comparison")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up; medians count")
    ap.add_argument("--length", type=int, default=32, help="tokens per text (padded/truncated)")
    ap.add_argument("--with-plain-512", action="store_true", help="also plain at --big (small-random: ~5.5 GB RSS)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is steadier on a busy box)")
    ap.add_argument("--data", type=Path, default=next((p for p in DATA if p.is_file()), DATA[0]))
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/gradcache.json")
    for hidden in ("--child", "--folder", "--batch"):
        ap.add_argument(hidden, type=int if hidden == "--batch" else str, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    if not args.data.is_file():
        sys.exit(f"SNLI triplets not found at {args.data} (bench/prepare_cpu_data.sh makes them); pass --data")
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(args.model, tmp)
        env = environment(args, folder)
        print(f"model {env['model']}, {args.length} tokens/text, 3 groups; {args.device} ({env['gpu'] or env['cpu']}), "
              f"torch {env['torch']}, {env['torch_threads']} threads", flush=True)
        configs = [("plain", args.chunk, args.chunk), ("gradcache", args.big, args.chunk)]
        configs += [("plain", args.big, args.big)] if args.with_plain_512 else []
        memory = [measure_memory(args, folder, *c) for c in configs]
        timing = measure_time(args, folder)
    mem, inc, verdicts = report(memory, timing, "RSS" if args.device == "cpu" else "CUDA allocated")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k not in ("child", "folder", "batch", "out")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(settings=settings, environment=env, memory=memory, memory_ratio=mem,
                                        increment_ratio=inc, time=timing, verdicts=verdicts), indent=2))


if __name__ == "__main__":
    main()
