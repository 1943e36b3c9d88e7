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
    # 0, 1 or 2 hard negatives per record: the two halves of a batch carry different numbers of negatives
    ret = [{"query": sent(i, 3), "pos": [sent(i + 1)], "neg": [sent(i + 5 + k) for k in range(i % 3)]} for i in range(16)]
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
        "max_grad_norm": 0.0, **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def losses(out: Path, stage: str) -> list[dict]:
    return [json.loads(x) for x in (out / stage / "losses.jsonl").read_text().splitlines()]


def test_two_processes_follow_one(tmp_path, base_dirs):
    base = base_dirs["qwen2"]
    single = write(tmp_path, base, "single", 1)
    double = write(tmp_path, base, "double", 2, chunk_size=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "qzhou.cli", "train", str(single)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "qzhou.cli", "train", str(double)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    for stage in ("stage1", "stage2"):
        a, b = losses(tmp_path / "single", stage), losses(tmp_path / "double", stage)
        assert [(x["dataset"], x["tokens"]) for x in a] == [(x["dataset"], x["tokens"]) for x in b]
        for x, y in zip(a, b):
            assert abs(x["loss"] - y["loss"]) <= 1e-4 * max(1.0, abs(x["loss"])), (stage, x, y)
    wa, wb = weights(tmp_path / "single" / "stage2" / "final"), weights(tmp_path / "double" / "stage2" / "final")
    assert torch.allclose(wa, wb, atol=2e-5), (wa - wb).abs().max()
