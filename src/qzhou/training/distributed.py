"""Cross-device negatives: embeddings gathered from every process *with* gradients.

`torch.distributed.nn.functional.all_gather` sums the incoming gradients in backward, so when every rank
computes the same global loss on the gathered batch, each rank's local embeddings receive world_size × the
single-process gradient, and DDP's gradient averaging divides that back: parameters get exactly the gradient of
the single-process loss on the concatenated batch (tests/test_distributed.py checks this with 2 processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]  # NCCL: on the GPU
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))]).contiguous()


def gather(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) local rows -> (Σ b_r, ...) rows of all ranks in rank order, differentiable. Ranks may hold
    different numbers of rows (a process whose records have fewer hard negatives): rows are padded to the
    largest count for the collective and the padding is cut off again (it gets no gradient)."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    sizes = _sizes(x.shape[0], x.device)
    parts = all_gather(_padded(x, max(sizes)))
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def gather_labels(x: torch.Tensor) -> torch.Tensor:
    """The same for tensors without gradients (labels, text ids)."""
    if world_size() == 1:
        return x
    sizes = _sizes(x.shape[0], x.device)
    out = [x.new_empty((max(sizes), *x.shape[1:])) for _ in range(world_size())]
    dist.all_gather(out, _padded(x, max(sizes)))
    return torch.cat([p[:n] for p, n in zip(out, sizes)], dim=0)
