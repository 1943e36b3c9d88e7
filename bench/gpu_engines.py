"""The trainer under each engine on a GPU: plain, FSDP, DeepSpeed ZeRO-2 and ZeRO-3, each with and without
GradCache, LoRA under each sharded engine, and exact resume under the engines; compared with the plain single-GPU run.

A small random Qwen2 (4 layers, hidden 256; a test-style word tokenizer) trains the two-stage recipe of
tests/test_trainer_distributed.py (retrieval with uneven hard negatives, STS, classification) for 2 + 4 steps in
bf16, one process per engine through `accelerate launch --config_file configs/accelerate/ENGINE.yaml
--num_processes 1`. Reported per run: the loss of every step and its largest gap to the plain run, the final
model folder's embeddings (loaded back with `Embedder.load`) against the plain run's (min cosine), and for the
resumed runs the largest weight gap to the same run uninterrupted.

Checks (printed as PASS/FAIL, and in the JSON):
* every run finishes and writes a loadable model folder;
* GradCache under an engine follows that engine's plain run (largest relative loss gap <= 1%: bf16 chunked vs
  whole forwards);
* every engine follows the plain single-GPU run, LoRA under an engine the plain LoRA run (relative gap <= 3%:
  DeepSpeed keeps bf16 weights with fp32 masters where plain keeps fp32 weights under autocast);
* resume from checkpoint-2 of stage 2 ends at the uninterrupted run's weights (max abs gap <= 1e-3).

Run (on a CUDA machine with deepspeed installed):  python bench/gpu_engines.py [--out bench/results/gpu_engines.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
ENGINES = ["fsdp", "zero2", "zero3"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sent(i: int, n: int = 6) -> str:
    from conftest import WORDS

    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def write_base(folder: Path) -> Path:
    from conftest import make_tokenizer
    from transformers import Qwen2Config, Qwen2Model

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = Qwen2Model(Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_recipe(tmp: Path, base: Path, name: str, **extra) -> Path:
    data = tmp / "data"
    if not data.is_dir():
        data.mkdir()
        ret = [{"query": sent(i, 3), "pos": [sent(i + 1)], "neg": [sent(i + 5 + k) for k in range(2 if i % 5 == 0 else 0)]}
               for i in range(64)]
        sts = [{"text1": sent(i), "text2": sent(i + 2), "score": float(i % 5)} for i in range(64)]
        cls = [{"query": sent(i), "pos": [sent(i + 3)], "neg": [sent(i + 4)], "label": i % 3,
                "neg_labels": [(i + 1) % 3]} for i in range(64)]
        for n, rows in (("ret", ret), ("sts", sts), ("cls", cls)):
            (data / f"{n}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = {
        "model": {"base": str(base), "attention": "bidirectional", "pooling": "mean"},
        "datasets": [{"name": "ret", "path": str(data / "ret.jsonl"), "task": "retrieval", "instruction": "Find it"},
                     {"name": "sts", "path": str(data / "sts.jsonl"), "task": "sts"},
                     {"name": "cls", "path": str(data / "cls.jsonl"), "task": "classification"}],
        "stages": [{"name": "stage1", "datasets": ["ret"], "steps": 2, "lr": 1e-4},
                   {"name": "stage2", "datasets": ["ret", "sts", "cls"], "steps": 4, "lr": 1e-4, "retrieval_share": 0.5}],
        "batch_size": {"retrieval": 16, "sts": 16, "classification": 16},
        "output_dir": str(tmp / name), "hard_negatives": 2, "query_max_length": 16, "passage_max_length": 24,
        "precision": "bf16-mixed" if DEVICE == "cuda" else "fp32", "checkpoint_every": 2, **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(engine: str | None, recipe: Path, log: Path, port: int) -> tuple[int, float]:
    if engine is None:
        cmd = [sys.executable, "-m", "qzhou.cli", "train", str(recipe)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs" / "accelerate" / f"{engine}.yaml"), "--num_processes", "1",
               "--main_process_port", str(port), "-m", "qzhou.cli", "train", str(recipe)]
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            timeout=600).returncode
    return rc, time.perf_counter() - t0


def losses(out: Path) -> list[float]:
    rows = []
    for stage in ("stage1", "stage2"):
        f = out / stage / "losses.jsonl"
        rows += [json.loads(x)["loss"] for x in f.read_text().splitlines()] if f.is_file() else []
    return rows


def embeddings(folder: Path) -> torch.Tensor:
    from qzhou.modeling.embedder import Embedder

    e = Embedder.load(folder, dtype="float32", device=DEVICE)
    return e.encode([sent(i) for i in range(32)], convert_to="torch").float().cpu()


def weights(folder: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    return torch.cat([state[k].float().flatten() for k in sorted(state)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_engines.json")
    ap.add_argument("--logs", type=Path, default=None, help="folder for the runs' logs (default: a temp folder)")
    ap.add_argument("--engines", nargs="*", default=ENGINES, choices=ENGINES,
                    help="engines to run (none: the plain runs only, a dry run of this script on a CPU)")
    args = ap.parse_args()
    if args.engines and not torch.cuda.is_available():
        raise SystemExit("the engines need a CUDA GPU (--engines with no names: a CPU dry run)")
    tmp = Path(tempfile.mkdtemp())
    logs = args.logs or tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = write_base(tmp / "base")
    groups = [(None, [("plain", {}), ("plain-gc", {"chunk_size": 4}), ("plain-lora", {"lora": {"r": 8, "alpha": 16}})])]
    groups += [(e, [(e, {}), (f"{e}-gc", {"chunk_size": 4}), (f"{e}-lora", {"lora": {"r": 8, "alpha": 16}})])
               for e in args.engines]

    def run_group(engine: str | None, runs: list, port: int) -> dict[str, dict]:
        """One engine's runs in order, then its resume check (groups run side by side: tiny models, one GPU)."""
        out: dict[str, dict] = {}
        for name, extra in runs:
            rc, secs = launch(engine, write_recipe(tmp, base, name, **extra), logs / f"{name}.log", port)
            final = tmp / name / "stage2" / "final"
            r = {"engine": engine or "none", "extra": extra, "rc": rc, "seconds": round(secs, 1),
                 "losses": losses(tmp / name)}
            if rc == 0 and final.is_dir():
                r["embeddings"] = embeddings(final)
            else:
                r["log_tail"] = (logs / f"{name}.log").read_text()[-2500:]
            out[name] = r
            print(f"{name}: rc {rc}, {secs:.1f} s, losses {r['losses']}", flush=True)
        name = runs[0][0]  # resume: drop stage 2's last checkpoint and outputs, rerun, compare the weights
        if out[name]["rc"] == 0:
            run_dir = tmp / name
            straight = weights(run_dir / "stage2" / "final")
            for p in ("checkpoint-4", "final", "DONE", "losses.jsonl"):
                target = run_dir / "stage2" / p
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            rc, secs = launch(engine, tmp / f"{name}.yaml", logs / f"{name}-resume.log", port)
            r = {"rc": rc, "seconds": round(secs, 1)}
            if rc == 0:
                r["max_weight_gap"] = float((weights(run_dir / "stage2" / "final") - straight).abs().max())
                r["resumed"] = "resuming stage2" in (logs / f"{name}-resume.log").read_text()
            else:
                r["log_tail"] = (logs / f"{name}-resume.log").read_text()[-2500:]
            out[name]["resume"] = r
            print(f"{name} resume: {r}", flush=True)
        return out

    write_recipe(tmp, base, "data-only")  # the shared data files, written once before the groups start
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(groups)) as pool:
        futures = [pool.submit(run_group, engine, runs, 29500 + 7 * i) for i, (engine, runs) in enumerate(groups)]
        results: dict[str, dict] = {}
        for f in futures:
            results.update(f.result())

    checks = []
    ref = results["plain"]
    for name, r in results.items():
        checks.append((f"{name}: finishes, loadable model folder", r["rc"] == 0 and "embeddings" in r, ""))
        if "embeddings" not in r or "embeddings" not in ref:
            continue
        r["min_cos_vs_plain"] = float(torch.nn.functional.cosine_similarity(r["embeddings"], ref["embeddings"]).min())
        engine, _, variant = name.partition("-")
        # GradCache follows its engine's plain run; an engine follows plain; LoRA under an engine follows plain LoRA
        own = {"gc": results.get(engine), "lora": results.get("plain-lora"), "": ref}[variant]
        if name not in ("plain", "plain-lora") and own and len(r["losses"]) == len(own["losses"]) and r["losses"]:
            gap = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], own["losses"]))
            r["max_loss_gap"] = gap
            limit = 0.01 if variant == "gc" else 0.03
            checks.append((f"{name}: losses follow {'its engine' if variant == 'gc' else 'plain' + (' LoRA' if variant else '')} "
                           f"(largest relative gap {gap:.4f} <= {limit})", gap <= limit, ""))
        if "resume" in r:
            gap = r["resume"].get("max_weight_gap")
            checks.append((f"{name}: resume ends at the uninterrupted weights (gap {gap})",
                           gap is not None and gap <= 1e-3 and r["resume"].get("resumed", False), ""))
    print("\n| run | rc | seconds | final loss | max loss gap | min cos vs plain | resume gap |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['rc']} | {r['seconds']} | {r['losses'][-1] if r['losses'] else '-'} | "
              f"{r.get('max_loss_gap', '-')} | {r.get('min_cos_vs_plain', '-')} | "
              f"{r.get('resume', {}).get('max_weight_gap', '-')} |")
    for line, ok, _ in checks:
        print(("PASS " if ok else "FAIL ") + line)
    for name, r in results.items():
        for tail in (r.get("log_tail"), r.get("resume", {}).get("log_tail")):
            if tail:
                print(f"\n----- {name} log tail -----\n{tail}")
    import accelerate
    import transformers

    try:
        import deepspeed
        ds_version = deepspeed.__version__
    except ImportError:
        ds_version = None
    for r in results.values():
        r.pop("embeddings", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "versions": {"torch": torch.__version__, "transformers":
        transformers.__version__, "accelerate": accelerate.__version__, "deepspeed": ds_version},
        "results": results, "checks": [{"check": c, "pass": ok} for c, ok, _ in checks]}, indent=2))


if __name__ == "__main__":
    main()
