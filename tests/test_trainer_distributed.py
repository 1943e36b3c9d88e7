"""The trainer launched with 2 CPU processes (torchrun, as `accelerate launch` does; DDP over gloo): each process embeds half of every global
batch, negatives are gathered across processes, and training follows the single-process run on the same global
batch step for step (same losses, same weights), also with GradCache chunks and with records whose number of
hard negatives differs between the processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_trainer import sent, weights

pytestmark = pytest.mark.slow


def write(tmp: Path, base: Path, name: str, scale: int, **extra) -> Path:
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    # hard negatives on 3 records of 16: most batches have a half whose records have none while the other half has
    # some (uneven gathers, an empty group in one process)
    ret = [{"query": sent(i, 3), "pos": [sent(i + 1)], "neg": [sent(i + 5 + k) for k in range(2 if i % 5 == 0 else 0)]}
           for i in range(16)]
    sts = [{"text1": sent(i), "text2": sent(i + 2), "score": float(i % 5)} for i in range(16)]
    cls = [{"query": sent(i), "pos": [sent(i + 3)], "neg": [sent(i + 4)], "label": i % 3, "neg_labels": [(i + 1) % 3]}
           for i in range(16)]
    for n, rows in (("ret", ret), ("sts", sts), ("cls", cls)):
        (data / f"{n}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = {
        "model": {"base": str(base), "attention": "bidirectional", "pooling": "mean"},
        "datasets": [{"name": "ret", "path": "data/ret.jsonl", "task": "retrieval", "instruction": "Find it"},
                     {"name": "sts", "path": "data/sts.jsonl", "task": "sts"},
                     {"name": "cls", "path": "data/cls.jsonl", "task": "classification"}],
        "stages": [{"name": "stage1", "datasets": ["ret"], "steps": 3, "lr": 1e-4},
                   {"name": "stage2", "datasets": ["ret", "sts", "cls"], "steps": 4, "lr": 1e-4, "retrieval_share": 0.5}],
        # per-process batch sizes: 2 processes × 4 rows = 1 process × 8 rows
        "batch_size": {"retrieval": 8 // scale, "sts": 8 // scale, "classification": 8 // scale},
        "output_dir": str(tmp / name), "hard_negatives": 2, "query_max_length": 16, "passage_max_length": 24,
        "max_grad_norm": 1e9, **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def losses(out: Path, stage: str) -> list[dict]:
    return [json.loads(x) for x in (out / stage / "losses.jsonl").read_text().splitlines()]


def run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def assert_uneven_negatives() -> None:
    """Stage 1 replayed: some batch gives one process no hard negatives while the other has some."""
    from qzhou.data.sampler import MultiTaskBatchSampler

    sampler = MultiTaskBatchSampler([16], [True], [8], seed=0)
    halves = [[sum(r % 5 == 0 for r in rows[:4]), sum(r % 5 == 0 for r in rows[4:])]
              for rows in (sampler.next_batch()[1] for _ in range(3))]
    assert any(0 in h and max(h) > 0 for h in halves), halves


def test_two_processes_follow_one(tmp_path, base_dirs):
    assert_uneven_negatives()
    base = base_dirs["qwen2"]
    run(["-m", "qzhou.cli", "train", str(write(tmp_path, base, "single", 1))])
    for name, extra in (("double", {}), ("double-gradcache", {"chunk_size": 1})):
        run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "qzhou.cli", "train", str(write(tmp_path, base, name, 2, **extra))])
        for stage in ("stage1", "stage2"):
            a, b = losses(tmp_path / "single", stage), losses(tmp_path / name, stage)
            assert [(x["dataset"], x["tokens"]) for x in a] == [(x["dataset"], x["tokens"]) for x in b]
            for x, y in zip(a, b):
                for key in ("loss", "grad_norm"):  # grad_norm: the gradient scale, which Adam alone would hide
                    assert abs(x[key] - y[key]) <= 1e-4 * max(1.0, abs(x[key])), (name, stage, key, x, y)
        wa, wb = weights(tmp_path / "single" / "stage2" / "final"), weights(tmp_path / name / "stage2" / "final")
        assert torch.allclose(wa, wb, atol=2e-5), (name, (wa - wb).abs().max())
        assert not (tmp_path / name / "stage1" / "tb").exists() or len(list((tmp_path / name / "stage1" / "tb").iterdir())) == 1
