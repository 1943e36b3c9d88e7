"""Run by tests/test_distributed.py under torch.distributed.run (2 processes, gloo, CPU): each rank embeds its
slice of a global batch with a DDP-wrapped model through the packer, the loss is computed on gathered embeddings
(plain, merged or GradCache), and rank 0 writes the loss and the DDP-averaged parameter gradients to argv[1]. The
ranks hold different numbers of negatives, so their forward counts differ and the packer pads them."""

from __future__ import annotations

import json
import os
import sys
from functools import partial

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from qzhou.training.engines import most_forwards
from qzhou.training.objectives import LossConfig, classification_loss, retrieval_loss, sts_loss
from qzhou.training.packing import Engine, Packing, pack_and_embed

B, NEGATIVES, RANK0_NEGATIVES = 8, 12, 9  # queries/positives split evenly; negatives 9 + 3


class Tiny(torch.nn.Module):
    """forward(input_ids, attention_mask) -> one row per input row, like the Embedder."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(30, 12)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.mlp((self.emb(input_ids) * m).sum(1) / m.sum(1))


def model():
    torch.manual_seed(0)
    return Tiny()


def data():
    g = torch.Generator().manual_seed(0)

    def rows(n):
        return [torch.randint(1, 30, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
                for _ in range(n)]

    return {"q": rows(B), "p": rows(B), "n": rows(NEGATIVES), "scores": torch.rand(B, generator=g),
            "labels": torch.randint(0, 3, (B,), generator=g),
            "neg_labels": torch.randint(0, 3, (NEGATIVES,), generator=g),
            "pos_keys": torch.arange(B), "neg_keys": torch.arange(B, B + NEGATIVES)}


def objectives(cfg):
    return {
        "qzhou": (("q", "p", "n"), lambda q, p, n, d: retrieval_loss(cfg, q, p, n)),
        "qwen3": (("q", "p", "n"), lambda q, p, n, d: retrieval_loss(LossConfig(retrieval="qwen3", tau=0.1), q, p, n,
                                                                     d["pos_keys"], d["neg_keys"])),
        "cosent": (("q", "p"), lambda a, b, d: sts_loss(cfg, a, b, d["scores"])),
        "classification": (("q", "p", "n"), lambda t, p, n, d: classification_loss(cfg, t, p, n, d["labels"],
                                                                                   d["neg_labels"])),
    }


def local(d, rank):
    half = slice(rank * B // 2, (rank + 1) * B // 2)
    neg = slice(0, RANK0_NEGATIVES) if rank == 0 else slice(RANK0_NEGATIVES, NEGATIVES)
    return {k: v[neg] if k in ("n", "neg_labels", "neg_keys") else v[half] for k, v in d.items()}


MODES = {"plain": Packing(merge=False), "merged": Packing(), "gradcache": Packing(merge=False, chunk_size=2),
         "gradcache-merged": Packing(chunk_size=3)}


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = DDP(model())
    d = local(data(), rank)
    cfg = LossConfig(tau=0.1)
    results = {}
    for mode, packing in MODES.items():
        for name, (roles, fn) in objectives(cfg).items():
            net.zero_grad()
            engine = Engine(no_sync=net.no_sync, keep_last=False, most_forwards=partial(most_forwards, "cpu"))
            batch = pack_and_embed({r: d[r] for r in roles}, net, packing, engine)
            loss = fn(*batch.embeddings.values(), d)
            batch.backward(loss)
            padding = [0, 0]
            dist.all_gather_object(padding, len(batch.padding))
            results[f"{mode}/{name}"] = {"loss": loss.detach().item(), "padding": padding,
                                         "grads": [p.grad.flatten().tolist() for p in net.parameters()]}
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's worker threads may still hold tensors of DDP's async
    # all-reduce work, and freeing them during teardown aborts the process ("terminate called without an active
    # exception", pytorch/pytorch#179291). Everything this worker produces is already on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
