"""The one packer: a batch's rows (unpadded token ids, per role) -> their embeddings in row order, and the backward.

Everything about how rows meet the model lives here and nowhere else:

- merged forwards: the rows of every role share forwards (fewer, larger matrix products: faster on CPUs and GPUs,
  what sentence-transformers 6 does for a loss's candidate columns); `merge=False` gives one forward per role, the
  plain path kept for comparison and debugging;
- length buckets: a merged batch runs as up to `buckets` forwards of like-length rows (`length_runs`: exact DP on
  computed tokens plus a per-forward cost), each padded once, to its own longest row;
- GradCache (Gao et al. 2021) when `chunk_size` is set: every forward holds at most `chunk_size` rows; pass 1 embeds
  them without a graph (recording the RNG state, so dropout repeats exactly), the loss backpropagates to the cached
  embeddings only, then each chunk is embedded again with a graph and takes its cached gradient. Peak activation
  memory is one chunk's; in one process the last chunk keeps its pass-1 graph instead of running twice;
- several processes: every process must run the same number of forwards and backwards (DDP broadcasts buffers,
  FSDP / ZeRO-3 gather weights in each forward, ZeRO reduces in each backward) while its rows differ, so the count
  is raised to the largest over the processes with one-row padding forwards whose output carries no gradient.

Rows are padded exactly once, here; rotary positions are relative, so padding on either side changes nothing.
Embeddings and parameter gradients equal those of one plain forward per role (tests/test_gradcache.py,
tests/test_trainer_equivalence.py). The model is anything whose `forward(input_ids, attention_mask)` returns one
row per input row (the Embedder, or the reranker's yes-minus-no logit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from qzhou.modeling.embedder import pad_ids

RUN_OVERHEAD_TOKENS = 64  # what one more forward costs, in tokens, when rows are grouped by length


@dataclass(frozen=True)
class Packing:
    """How a batch's rows become forwards (the recipe's merge_forwards, length_buckets and chunk_size)."""

    padding_side: str = "left"
    pad_id: int = 0
    buckets: int = 1  # forwards per merged batch, rows grouped by length; 1 = one forward
    chunk_size: int | None = None  # GradCache: rows per forward; None = every forward keeps its graph
    merge: bool = True  # False: one forward per role (the plain path)
    overhead: int = RUN_OVERHEAD_TOKENS


def _loss_backward(loss: torch.Tensor) -> None:
    loss.backward()


def _chunk_backward(embeddings: torch.Tensor, grad: torch.Tensor, last: bool) -> None:
    embeddings.backward(grad)


@dataclass
class Engine:
    """How forwards and backwards meet the training engine (`training.engines.packing_engine`); the defaults are
    one plain process. `chunk_backward(embeddings, grad, last)`: how a GradCache chunk's gradient enters the model
    (DeepSpeed: engine.backward, optimizer boundary at the last chunk). `no_sync`: DDP's, for every chunk backward
    but the last. `keep_last`: reuse the last chunk's pass-1 graph (not under FSDP, whose later forwards reshard
    the parameters that graph holds). `most_forwards(n)`: the largest forward count over the processes."""

    autocast: Callable[[], AbstractContextManager] = nullcontext
    backward: Callable[[torch.Tensor], None] = _loss_backward
    chunk_backward: Callable[[torch.Tensor, torch.Tensor, bool], None] = _chunk_backward
    no_sync: Callable[[], AbstractContextManager] | None = None
    keep_last: bool = True
    most_forwards: Callable[[int], int] | None = None
    device: torch.device | str | None = None


class RandState:
    """Captures and restores the CPU and CUDA RNG states around one chunk's forward."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def length_runs(lengths: list[int], most: int, overhead: int = 0) -> list[list[int]]:
    """Row indices cut into at most `most` runs of like length, for one forward each: rows sorted by length (ties
    by index), cut where the total computed tokens — each run's rows × its longest row, plus `overhead` tokens per
    forward — is least (exact dynamic program over the distinct lengths). One run keeps the rows in order."""
    if most <= 1 or len(set(lengths)) <= 1:
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    tally = Counter(lengths)
    values = sorted(tally)
    prefix = [0]
    for v in values:
        prefix.append(prefix[-1] + tally[v])
    m, inf = len(values), float("inf")
    # best[k][j]: least cost of the rows with the j smallest distinct lengths in k runs; cut[k][j]: the last run's start
    best = [[inf] * (m + 1) for _ in range(most + 1)]
    cut = [[0] * (m + 1) for _ in range(most + 1)]
    best[0][0] = 0
    for k in range(1, most + 1):
        for j in range(1, m + 1):
            for i in range(j):
                cost = best[k - 1][i] + (prefix[j] - prefix[i]) * values[j - 1] + overhead
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, most + 1), key=lambda k: (best[k][m], k))
    if k == 1:
        return [list(range(len(lengths)))]
    runs, j = [], m
    while k > 0:
        i = cut[k][j]
        runs.append(order[prefix[i]:prefix[j]])
        j, k = i, k - 1
    return runs[::-1]


def plan_forwards(lengths_by_role: list[list[int]], packing: Packing) -> list[list[int]]:
    """The forwards of one batch, as lists of row indices (rows numbered across roles in role order): merged and cut
    into length runs, or one per non-empty role; then cut into GradCache chunks of like-length rows."""
    if packing.merge:
        forwards = length_runs([n for lengths in lengths_by_role for n in lengths], packing.buckets, packing.overhead)
    else:
        starts = [0]
        for lengths in lengths_by_role:
            starts.append(starts[-1] + len(lengths))
        forwards = [list(range(a, b)) for a, b in zip(starts, starts[1:]) if b > a]
    if packing.chunk_size:
        size = packing.chunk_size
        forwards = [run[i:i + size] for run in forwards for i in range(0, len(run), size)]
    return forwards


def pad(rows: list[list[int]], side: str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids -> (input_ids, attention_mask), padded once, on `side`, to the longest row (the padder
    encode and score use, `modeling.embedder.pad_ids`)."""
    return pad_ids(rows, pad_id, left=side == "left")


class PackedBatch:
    """One batch's embeddings per role (`embeddings`) and, once the loss is known, its `backward(loss)`."""

    def __init__(self, rows_by_role: Mapping[str, list[list[int]]], forward, packing: Packing, engine: Engine):
        self.forward, self.packing, self.engine = forward, packing, engine
        self.roles = list(rows_by_role)
        self.sizes = [len(rows_by_role[r]) for r in self.roles]
        self.rows = [row for role in self.roles for row in rows_by_role[role]]
        self.plan = plan_forwards([[len(x) for x in rows_by_role[r]] for r in self.roles], packing)
        extra = engine.most_forwards(len(self.plan)) - len(self.plan) if engine.most_forwards else 0
        self.padding = [[0]] * extra  # one-row forwards that keep every process's forward count equal
        self.order = [i for indices in self.plan for i in indices]
        self.computed_tokens = 0  # tokens run through the model with a graph, padding included
        self.kept: torch.Tensor | None = None
        self.states: list[RandState] = []
        self.embeddings: dict[str, torch.Tensor] = {}
        self.padding_term: torch.Tensor | None = None
        self._cached: torch.Tensor | None = None

    def _run(self, indices: list[int]) -> torch.Tensor:
        ids, mask = pad([self.rows[i] for i in indices], self.packing.padding_side, self.packing.pad_id)
        if torch.is_grad_enabled():
            self.computed_tokens += ids.numel()
        with self.engine.autocast():
            return self.forward(ids.to(self.engine.device or "cpu"), mask.to(self.engine.device or "cpu"))

    def _in_row_order(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(outputs)
        if self.order != list(range(len(self.order))):
            inverse = torch.empty(len(self.order), dtype=torch.long)
            inverse[torch.tensor(self.order)] = torch.arange(len(self.order))
            stacked = stacked[inverse.to(stacked.device)]
        return stacked

    def _by_role(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.roles, embeddings.split(self.sizes)))

    def embed_plain(self) -> PackedBatch:
        outputs = [self._run(indices) for indices in self.plan]
        padded = [self._run(indices) for indices in self.padding]
        if padded:  # in the graph with a zero weight: every process's backward then reaches the same parameters
            self.padding_term = sum(p.sum() for p in padded) * 0.0
        self.embeddings = self._by_role(self._in_row_order(outputs))
        return self

    def embed_cached(self) -> PackedBatch:
        """GradCache pass 1: every forward without a graph (but the kept last one), RNG state recorded first."""
        keep = self.engine.keep_last and not self.padding
        outputs = []
        for n, indices in enumerate(self.plan + self.padding):
            self.states.append(RandState())
            if keep and n == len(self.plan) - 1:
                self.kept = self._run(indices)
                outputs.append(self.kept.detach())
            else:
                with torch.no_grad():
                    outputs.append(self._run(indices))
        self._cached = self._in_row_order(outputs[:len(self.plan)]).detach().requires_grad_()
        self.embeddings = self._by_role(self._cached)
        return self

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` (computed from `embeddings`) into the model's parameters."""
        if self._cached is None:
            self.engine.backward(loss if self.padding_term is None else loss + self.padding_term)
            return
        loss.backward()  # to the cached embeddings only
        grads = self._cached.grad[torch.tensor(self.order, device=self._cached.device)]
        jobs = list(zip(self.plan + self.padding, self.states,
                        [*grads.split([len(p) for p in self.plan]), *(grads[:1] * 0.0 for _ in self.padding)]))
        for n, (indices, state, grad) in enumerate(jobs):
            last = n == len(jobs) - 1
            if last and self.kept is not None:
                self.engine.chunk_backward(self.kept, grad, True)
                break
            with nullcontext() if self.engine.no_sync is None or last else self.engine.no_sync():
                current = RandState()
                state.restore()
                embeddings = self._run(indices)
                current.restore()
                self.engine.chunk_backward(embeddings, grad, last)


def pack_and_embed(rows_by_role: Mapping[str, list[list[int]]], forward: Callable[..., torch.Tensor],
                   packing: Packing, engine: Engine | None = None) -> PackedBatch:
    """Embed a batch's rows (`{role: [token ids per row]}`) with `forward(input_ids, attention_mask)`: returns the
    `PackedBatch` whose `embeddings` (`{role: (rows, D)}`, row order) the loss takes and whose `backward(loss)`
    trains the model. With `packing.chunk_size` the embeddings hold no graph (GradCache) and the backward runs the
    second pass; otherwise they hold the graph and the backward is the engine's."""
    batch = PackedBatch(rows_by_role, forward, packing, engine or Engine())
    return batch.embed_cached() if packing.chunk_size else batch.embed_plain()
