"""Cross-device negatives: 2 real processes (torch.distributed.run, gloo, CPU) give the same loss and parameter
gradients as one process on the concatenated batch, plain and with GradCache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dist_worker
import pytest
import torch

from qzhou.training.objectives import LossConfig


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "dist.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(Path(__file__).parent / "dist_worker.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        pytest.fail(f"torch.distributed.run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    got = json.loads(out.read_text())
    d = dist_worker.data()
    for name, (roles, fn) in dist_worker.objectives(LossConfig(tau=0.1)).items():
        net = dist_worker.model()
        loss = fn(*[net(d[r]) for r in roles], d)
        loss.backward()
        for mode in ("plain", "gradcache"):
            r = got[f"{mode}/{name}"]
            assert abs(r["loss"] - loss.item()) < 1e-5, (mode, name)
            for p, g in zip(net.parameters(), r["grads"]):
                assert torch.allclose(p.grad.flatten(), torch.tensor(g), atol=1e-6, rtol=1e-4), (mode, name)
