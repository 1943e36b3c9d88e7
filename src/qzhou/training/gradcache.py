"""GradCache (Gao et al. 2021): a large logical batch in small chunks, for any loss.

1. embed every chunk without a graph (recording the RNG state, so dropout repeats exactly);
2. compute the loss on the detached full-batch embeddings and backpropagate to them only;
3. re-embed each chunk with a graph and backpropagate the cached embedding gradients into the model.

Peak activation memory is that of one chunk; the extra cost is one more forward pass (less the last chunk, whose
graph from step 1 is kept in a single process). Parameter gradients
equal those of the plain full-batch computation (tests/test_gradcache.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

Features = dict[str, torch.Tensor]


class RandState:
    """Captures and restores the CPU and CUDA RNG states around one chunk's forward."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _chunks(features: Features, size: int) -> list[Features]:
    n = next(iter(features.values())).shape[0]
    return [{k: v[i:i + size] for k, v in features.items()} for i in range(0, n, size)]


def gradcache_backward(embed: Callable[[Features], torch.Tensor], groups: Sequence[Features],
                       loss_fn: Callable[..., torch.Tensor], chunk_size: int,
                       no_sync: Callable[[], object] | None = None,
                       backward: Callable[[torch.Tensor, torch.Tensor, bool], None] | None = None,
                       keep_last: bool | None = None, chunks_per_group: Sequence[int] | None = None) -> torch.Tensor:
    """Accumulate into the model's .grad the gradient of `loss_fn(*embeddings of groups)`; returns the loss.

    `groups`: tokenized batches (e.g. queries, positives, negatives), each split into `chunk_size` rows.
    `no_sync`: DDP's `model.no_sync` so that only the last chunk's backward all-reduces.
    `backward(embeddings, grad, last)`: how a chunk's cached gradient enters the model, where an engine owns
    backward (DeepSpeed: `engine.backward` with the accumulation boundary at the last chunk); default
    `embeddings.backward(grad)`.
    `keep_last`: keep the very last chunk's graph from the first pass instead of re-embedding it (default: in a
    single process, `no_sync` None). Not under FSDP: its later forwards reshard the parameters that graph holds.
    `chunks_per_group`: run at least this many chunks per group, padding with one-row chunks whose embeddings are
    dropped and whose backward carries a zero gradient. Under several processes every process must run the same
    number of forwards and backwards (FSDP / ZeRO-3 gather weights in each forward, ZeRO reduces in each backward),
    while its rows, and so its chunks, may differ: pass the largest count over the processes.
    """
    if backward is None:
        def backward(emb: torch.Tensor, grad: torch.Tensor, last: bool) -> None:
            emb.backward(grad)

    cached: list[torch.Tensor | None] = []
    states: list[list[tuple[Features, RandState]]] = []
    chunked = [_chunks(group, chunk_size) for group in groups]
    last = max((g for g, chunks in enumerate(chunked) if chunks), default=None)
    # Single process: the very last chunk keeps its graph from the first pass, so it is not embedded twice (its
    # backward comes last anyway). Under DDP every graph-building forward must pair with a synced backward, so
    # there every chunk is re-embedded.
    keep = (no_sync is None if keep_last is None else keep_last) and chunks_per_group is None
    kept: torch.Tensor | None = None
    for g, chunks in enumerate(chunked):
        parts, embs = [], []
        for c, chunk in enumerate(chunks):
            state = RandState()
            if keep and g == last and c == len(chunks) - 1:
                kept = embed(chunk)
                embs.append(kept.detach())
            else:
                with torch.no_grad():
                    embs.append(embed(chunk))
            parts.append((chunk, state))
        states.append(parts)
        cached.append(torch.cat(embs).detach().requires_grad_() if embs else None)
    ref = next(c for c in cached if c is not None)  # an empty group (no rows here) becomes a (0, dim) tensor
    padding = []  # padding chunks: a forward here, before the loss's collectives, and a zero-gradient backward
    if chunks_per_group is not None:
        one = {k: v[:1] for k, v in next(c for chunks in chunked for c in chunks).items()}
        for _ in range(sum(max(0, n - len(chunks)) for n, chunks in zip(chunks_per_group, chunked))):
            state = RandState()
            with torch.no_grad():
                embed(one)
            padding.append((one, state, ref.new_zeros((1, ref.shape[-1]))))
    cached = [c if c is not None else ref.new_zeros((0, ref.shape[-1])).requires_grad_() for c in cached]
    loss = loss_fn(*cached)
    loss.backward()
    jobs = [(chunk, state, grad) for parts, rep in zip(states, cached) if parts
            for (chunk, state), grad in zip(parts, rep.grad.split(chunk_size))]
    jobs += padding
    for i, (chunk, state, grad) in enumerate(jobs):
        if kept is not None and i == len(jobs) - 1:
            backward(kept, grad, True)
            break
        sync = nullcontext() if (no_sync is None or i == len(jobs) - 1) else no_sync()
        with sync:
            current = RandState()
            state.restore()
            emb = embed(chunk)
            current.restore()
            backward(emb, grad, i == len(jobs) - 1)
    return loss.detach()
