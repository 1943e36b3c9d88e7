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


def gather(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) local rows -> (world·b, ...) rows of all ranks in rank order, differentiable."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_labels(x: torch.Tensor) -> torch.Tensor:
    """The same for tensors without gradients (labels, text ids)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)
