"""The trainer under FSDP (FSDP2, full shard) with 2 CPU processes over gloo, launched as configs/accelerate/fsdp.yaml
launches it (`accelerate launch`, FSDP environment), with GradCache chunks whose counts differ between the processes
(uneven hard negatives): training follows the single-process plain run on the same global batches (losses, gradient
norms, final weights), the final model folder (gathered from the shards) loads with those weights, and a rerun
resumed from a mid-stage checkpoint (the engine's checkpoint, loaded back into the shards) ends where the
uninterrupted run ends.

accelerate selects FSDP only with an accelerator device: on CPUs it gives plain DDP (MULTI_CPU) whatever the FSDP
settings (`AcceleratorState.__init__`). torch's FSDP2 itself runs on CPU over gloo, and so does accelerate's FSDP2
preparation, so the worker below (this file, run as a script) turns that MULTI_CPU state into FSDP before the
trainer starts; everything after that is accelerate's and qzhou's own FSDP path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def fsdp_on_cpu() -> None:
    """After accelerate builds its state for several CPU processes (MULTI_CPU), make it FSDP where the launch asked
    for FSDP, as it does on GPUs (the same plugin, mixed precision and shared distributed type)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def patched(self, mixed_precision=None, cpu=False, dynamo_plugin=None, deepspeed_plugin=None, fsdp_plugin=None,
                *args, **kwargs):
        fresh = not AcceleratorState._shared_state
        init(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, fsdp_plugin, *args, **kwargs)
        if fresh and self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = patched


def launch(recipe: Path, *args: str) -> None:
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` with 2 processes, FSDP2, on CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
                           "--fsdp_version", "2", __file__, str(recipe), *args],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_fsdp_two_processes_follow_one(tmp_path, base_dirs):
    from test_trainer import weights
    from test_trainer_distributed import assert_uneven_negatives, losses, run, write

    # with one-row chunks the processes then embed different numbers of chunks (GradCache pads the smaller count)
    assert_uneven_negatives()
    base = base_dirs["qwen2"]
    run(["-m", "qzhou.cli", "train", str(write(tmp_path, base, "single", 1))])  # the reference: 1 process, plain
    recipe = write(tmp_path, base, "fsdp", 2, chunk_size=1, checkpoint_every=2)
    launch(recipe)
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    for stage, steps in (("stage1", (2, 3)), ("stage2", (2, 4))):
        for step in steps:  # the engine's checkpoint (FSDP: model, optimizer, scheduler, every process's RNG)
            engine = fsdp / stage / f"checkpoint-{step}" / "engine"
            assert {"pytorch_model_fsdp.bin", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl"} <= {
                p.name for p in engine.iterdir()}, (stage, step)
        a, b = losses(single, stage), losses(fsdp, stage)
        assert [(x["dataset"], x["tokens"]) for x in a] == [(x["dataset"], x["tokens"]) for x in b]
        for x, y in zip(a, b):
            for key in ("loss", "grad_norm"):  # grad_norm: the norm over both processes' shards
                assert abs(x[key] - y[key]) <= 1e-4 * max(1.0, abs(x[key])), (stage, key, x, y)
        # the model folders are written from the state gathered from the shards, and load on their own
        wa, wb = weights(single / stage / "final"), weights(fsdp / stage / "final")
        assert torch.allclose(wa, wb, atol=2e-5), (stage, (wa - wb).abs().max())
    assert torch.equal(weights(fsdp / "stage2" / "final"), weights(fsdp / "stage2" / "checkpoint-4" / "model"))

    # interrupted after stage 2's checkpoint-2: the rerun resumes from it (accelerate's load_state into the shards)
    resumed = tmp_path / "fsdp-resumed"
    shutil.copytree(fsdp, resumed)
    for name in ("checkpoint-4", "final", "DONE", "losses.jsonl", "loss.png", "tb"):
        path = resumed / "stage2" / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    launch(recipe, "--output-dir", str(resumed))

    def logged(out):  # every logged value but the step's time
        return [{k: v for k, v in x.items() if k != "seconds"} for x in losses(out, "stage2")]

    assert logged(resumed) == logged(fsdp)
    wa, wb = weights(fsdp / "stage2" / "final"), weights(resumed / "stage2" / "final")
    assert torch.allclose(wa, wb, atol=1e-6), (wa - wb).abs().max()


def worker(argv: list[str]) -> int:
    fsdp_on_cpu()
    from qzhou.cli import main

    return main(["train", *argv])


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))
