"""Engine set-up and the engine edge cases, kept out of the training loop: the Accelerator (mixed precision, CPU DDP,
trackers), DeepSpeed's config patching and its backward, the forward-count agreement between processes, and the
FSDP-on-CPU warning. `packing_engine` hands the packer what it needs from the engine and nothing else."""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from pathlib import Path

import torch

from qzhou.training.packing import Engine


def use_bf16(precision: str) -> bool:
    """bf16 autocast for "bf16-mixed", and for "auto" on GPUs with bf16 and on CPUs with native bf16 (AVX512-BF16 /
    AMX), where it is about 2.5x faster than fp32; fp32 elsewhere (emulated bf16 is slower than fp32)."""
    if precision != "auto":
        return precision == "bf16-mixed"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from qzhou.modeling.runtime import cpu_has_native_bf16

    return cpu_has_native_bf16()


def adamw(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these parameters (CPU and CUDA, fp32/bf16): one pass
    over parameters, gradients and moments instead of a chain of foreach ops; what HF Trainer picks by default."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def trackers(log_with: str | list[str] | None) -> list[str] | None:
    """The recipe's `log_with` -> accelerate's: "auto" is TensorBoard where it is installed, "none" is no tracker;
    anything else ("wandb", "mlflow", a list, "all") goes to accelerate as written."""
    if log_with in (None, "none"):
        return None
    if log_with == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else None
    return [log_with] if isinstance(log_with, str) else list(log_with)


def make_accelerator(cfg, stage_dir: Path):
    """The stage's Accelerator; trackers log under `stage_dir` (TensorBoard: stage_dir/tb)."""
    from accelerate import Accelerator, DistributedType
    from accelerate.state import AcceleratorState

    # Several processes on a machine without GPUs (torchrun / accelerate launch on CPU): DDP over gloo
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    precision = "bf16" if use_bf16(cfg.precision) else "no"
    if str(AcceleratorState._shared_state.get("_mixed_precision", precision)) != precision:
        # an earlier run in this process (a test, a notebook) fixed another precision: accelerate refuses to change
        # it, so its state (not the process group) is dropped and built anew
        AcceleratorState._reset_state()
    # step_scheduler_with_optimizer=False: a step here is one global batch, so the schedule advances once per
    # step (accelerate would otherwise advance it once per process and decay N times too fast)
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu_ddp,
                              step_scheduler_with_optimizer=False, log_with=trackers(cfg.log_with),
                              project_dir=str(stage_dir))
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    if accelerator.distributed_type == DistributedType.MULTI_CPU and fsdp_asked and accelerator.is_main_process:
        warnings.warn("FSDP was asked for, but accelerate runs several CPU processes as plain DDP (every process "
                      "holds the whole model); FSDP needs GPUs here", stacklevel=2)
    return accelerator


def finish_trackers(accelerator) -> None:
    """Close the stage's trackers (files flushed), but not the process group as `end_training` would: the next
    stage's Accelerator uses it."""
    for tracker in accelerator.trackers:
        tracker.finish()


def is_deepspeed(accelerator) -> bool:
    from accelerate import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def patch_deepspeed(accelerator, cfg, micro_batch: int) -> None:
    """DeepSpeed wants a micro-batch size (batches here come from the sampler, not a DataLoader), and its engine
    clips gradients: it takes the recipe's max_grad_norm unless its config sets another value."""
    if not is_deepspeed(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = micro_batch
    clip = ds.get("gradient_clipping", "auto")
    if clip == "auto":
        ds["gradient_clipping"] = cfg.max_grad_norm
    elif float(clip) != cfg.max_grad_norm:
        accelerator.print(f"note: DeepSpeed's gradient_clipping {clip} applies, not the recipe's max_grad_norm "
                          f"{cfg.max_grad_norm}")


def _deepspeed_chunk_backward(engine, embeddings: torch.Tensor, grad: torch.Tensor, last: bool) -> None:
    """A GradCache chunk's backward through the DeepSpeed engine (ZeRO's gradient hooks and reductions), with the
    accumulation boundary, and so the engine's optimizer step, at the last chunk only."""
    engine.backward((embeddings * grad).sum(), sync_gradients=last)


def most_forwards(device, count: int) -> int:
    """The largest forward count over the processes (one all-reduce)."""
    import torch.distributed as dist

    value = torch.tensor([count], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def packing_engine(accelerator, model) -> Engine:
    """What the packer needs from the engine: autocast, the loss backward, the chunk backward (DeepSpeed's own),
    DDP's no_sync and the forward-count agreement under several processes, and whether the last GradCache chunk may
    keep its first-pass graph (one process, not FSDP)."""
    from accelerate import DistributedType

    several = accelerator.num_processes > 1
    engine = Engine(autocast=accelerator.autocast, backward=accelerator.backward, device=accelerator.device,
                    keep_last=not several and accelerator.distributed_type != DistributedType.FSDP)
    if is_deepspeed(accelerator):
        engine.chunk_backward = functools.partial(_deepspeed_chunk_backward, accelerator.deepspeed_engine_wrapped)
    if several:
        engine.no_sync = functools.partial(accelerator.no_sync, model)
        engine.most_forwards = functools.partial(most_forwards, accelerator.device)
    return engine


def reduce_sum(accelerator, values: list[int]) -> list[int]:
    """Per-process counts summed over the processes (every process calls)."""
    if accelerator.num_processes == 1:
        return values
    total = accelerator.reduce(torch.tensor(values, device=accelerator.device), reduction="sum")
    return [int(x) for x in total.tolist()]
