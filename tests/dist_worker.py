"""Run by tests/test_distributed.py under torch.distributed.run (2 processes, gloo, CPU): each rank embeds its
slice of a global batch with a DDP-wrapped model, the loss is computed on gathered embeddings (plain or
GradCache), and rank 0 writes the loss and the DDP-averaged parameter gradients to argv[1]."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from qzhou.training.gradcache import gradcache_backward
from qzhou.training.objectives import LossConfig, classification_loss, retrieval_loss, sts_loss


def data():
    g = torch.Generator().manual_seed(0)
    B, K, D = 8, 2, 12
    return {"q": torch.randn(B, D, generator=g), "p": torch.randn(B, D, generator=g),
            "n": torch.randn(B * K, D, generator=g), "scores": torch.rand(B, generator=g),
            "labels": torch.randint(0, 3, (B,), generator=g), "neg_labels": torch.randint(0, 3, (B * K,), generator=g),
            "pos_keys": torch.arange(B), "neg_keys": torch.arange(B, B + B * K)}


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))


def objectives(cfg):
    return {
        "qzhou": (("q", "p", "n"), lambda q, p, n, d: retrieval_loss(cfg, q, p, n)),
        "qwen3": (("q", "p", "n"), lambda q, p, n, d: retrieval_loss(LossConfig(retrieval="qwen3", tau=0.1), q, p, n,
                                                                     d["pos_keys"], d["neg_keys"])),
        "cosent": (("q", "p"), lambda a, b, d: sts_loss(cfg, a, b, d["scores"])),
        "classification": (("q", "p", "n"), lambda t, p, n, d: classification_loss(cfg, t, p, n, d["labels"], d["neg_labels"])),
    }


def local(d, rank, world):
    out = {}
    for k, v in d.items():
        size = v.shape[0] // world
        out[k] = v[rank * size:(rank + 1) * size]
    return out


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    net = DDP(model())
    d = local(data(), rank, world)
    cfg = LossConfig(tau=0.1)
    results = {}
    for mode in ("plain", "gradcache"):
        for name, (roles, fn) in objectives(cfg).items():
            net.zero_grad()
            groups = [{"x": d[r]} for r in roles]

            def loss_fn(*embs, fn=fn):
                return fn(*embs, d)

            if mode == "plain":
                loss = loss_fn(*[net(g["x"]) for g in groups])
                loss.backward()
            else:
                loss = gradcache_backward(lambda f: net(f["x"]), groups, loss_fn, chunk_size=2, no_sync=net.no_sync)
            results[f"{mode}/{name}"] = {"loss": loss.detach().item(), "grads": [p.grad.flatten().tolist() for p in net.parameters()]}
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
