"""Cross-device negatives through the packer: 2 real processes (torch.distributed.run, gloo, CPU) give the same loss
and parameter gradients as one process on the concatenated batch, plain, merged and with GradCache, while the
processes hold different numbers of rows (forward counts padded to agree)."""

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
from qzhou.training.packing import pad


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
        loss = fn(*[net(*pad(d[r], "left", 0)) for r in roles], d)  # one process, one forward per role
        loss.backward()
        for mode in dist_worker.MODES:
            r = got[f"{mode}/{name}"]
            assert abs(r["loss"] - loss.item()) < 1e-5, (mode, name)
            for p, g in zip(net.parameters(), r["grads"]):
                assert torch.allclose(p.grad.flatten(), torch.tensor(g), atol=1e-6, rtol=1e-4), (mode, name)
    # rank 1 holds 3 negatives to rank 0's 9: 2+2+2 chunks of 2 rows against 2+2+5, 11 rows in chunks of 3 against 17
    assert got["gradcache/qzhou"]["padding"] == [0, 3] and got["gradcache-merged/qzhou"]["padding"] == [0, 2]
    assert got["gradcache/cosent"]["padding"] == [0, 0] and got["plain/qzhou"]["padding"] == [0, 0]
