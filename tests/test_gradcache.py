"""GradCache in the packer gives the same loss and parameter gradients as the plain full-batch computation, for
every objective's loss, with gradient checkpointing too; the engine hooks (DeepSpeed's chunk backward, FSDP's
keep_last=False) and the padding forwards that keep processes in step change nothing but the forward count."""

from __future__ import annotations

import pytest
import torch

from qzhou import Embedder
from qzhou.training.objectives import LossConfig, classification_loss, retrieval_loss, sts_loss
from qzhou.training.packing import Engine, Packing, pack_and_embed

WORDS = "the cat dog fox bird fish runs jumps sleeps eats quick brown lazy red blue green big small".split()


def texts(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(2, 9, (1,), generator=g)),),
                                                    generator=g)) for _ in range(n)]


def load(base_dirs):
    e = Embedder.load(base_dirs["qwen2"], dtype="float32", attention="bidirectional", pooling="mean")
    e.train()  # the tiny config has no dropout: plain and chunked runs see identical computations
    return e


@pytest.fixture(scope="module")
def embedder(base_dirs):
    return load(base_dirs)


B = 6
AUX = {"pos_keys": torch.arange(B), "neg_keys": torch.arange(B, 3 * B), "scores": torch.rand(B, generator=torch.Generator().manual_seed(7)),
       "labels": torch.tensor([0, 1, 0, 2, 1, 2]), "neg_labels": torch.tensor([1, 2, 0, 1, 1, 0, 0, 2, 2, 0, 1, 1])}
CFG = LossConfig(tau=0.05)
CASES = {
    "qzhou": (3, lambda q, p, n: retrieval_loss(CFG, q, p, n)),
    "qwen3": (3, lambda q, p, n: retrieval_loss(LossConfig(retrieval="qwen3", tau=0.05), q, p, n, AUX["pos_keys"],
                                                AUX["neg_keys"])),
    "cosent": (2, lambda a, b: sts_loss(CFG, a, b, AUX["scores"])),
    "classification": (3, lambda t, p, n: classification_loss(CFG, t, p, n, AUX["labels"], AUX["neg_labels"])),
}


def rows_for(e, n_roles, seed):
    return {f"role{g}": e.tokenizer(texts(B * (2 if g == 2 else 1), seed=seed + g))["input_ids"]
            for g in range(n_roles)}


def step(e, rows, fn, packing, engine=None):
    """One packed step; -> (loss, parameter gradients)."""
    e.zero_grad()
    batch = pack_and_embed(rows, e, packing, engine)
    loss = fn(*batch.embeddings.values())
    batch.backward(loss)
    return loss.detach(), [p.grad.clone() for p in e.parameters() if p.requires_grad], batch


def assert_grads(got, want, rtol=1e-3):  # fp32: chunked matmuls sum in another order, so relative to the scale
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-5 * float(w.abs().max()) + 1e-7)


@pytest.mark.parametrize("name", list(CASES))
def test_gradcache_equals_plain(embedder, name):
    n_roles, fn = CASES[name]
    rows = rows_for(embedder, n_roles, seed=0)
    side, pad_id = embedder.config.padding_side, embedder.tokenizer.pad_token_id
    plain, want, _ = step(embedder, rows, fn, Packing(side, pad_id, merge=False))
    for packing in (Packing(side, pad_id, chunk_size=2, merge=False), Packing(side, pad_id, chunk_size=4, buckets=3)):
        loss, grads, batch = step(embedder, rows, fn, packing)
        assert torch.allclose(loss, plain, atol=1e-6) and len(batch.plan) > 2
        assert_grads(grads, want)


def test_gradcache_with_gradient_checkpointing(base_dirs):
    e = load(base_dirs)
    rows = rows_for(e, 3, seed=30)
    side, pad_id = e.config.padding_side, e.tokenizer.pad_token_id
    plain, want, _ = step(e, rows, CASES["qzhou"][1], Packing(side, pad_id, merge=False))
    e.backbone.activation_checkpointing_enable()
    assert e.backbone.is_activation_checkpointing
    loss, grads, _ = step(e, rows, CASES["qzhou"][1], Packing(side, pad_id, chunk_size=3, buckets=2))
    assert torch.allclose(loss, plain, atol=1e-6)
    assert_grads(grads, want)


@pytest.mark.parametrize("keep_last", [True, False])
def test_engine_chunk_backward_and_keep_last(embedder, keep_last):
    """The chunk backward hook (DeepSpeed's engine.backward) receives every chunk once, `last` only on the final one,
    and gives the default's gradients; keep_last=False (FSDP) re-embeds the last chunk and changes nothing else."""
    rows = rows_for(embedder, 3, seed=10)
    fn = CASES["qzhou"][1]
    calls, forwards = [], [0]

    def counted(ids, mask):
        forwards[0] += 1
        return embedder(ids, mask)

    def hook(emb, grad, last):
        calls.append(last)
        (emb * grad).sum().backward()  # what the DeepSpeed hook hands to engine.backward

    packing = Packing(embedder.config.padding_side, embedder.tokenizer.pad_token_id, chunk_size=4, merge=False)
    _, want, _ = step(embedder, rows, fn, packing)
    embedder.zero_grad()
    batch = pack_and_embed(rows, counted, packing, Engine(chunk_backward=hook, keep_last=keep_last))
    batch.backward(fn(*batch.embeddings.values()))
    chunks = 2 + 2 + 3  # 6, 6 and 12 rows in chunks of 4
    assert calls == [False] * (chunks - 1) + [True]
    assert forwards[0] == (2 * chunks - 1 if keep_last else 2 * chunks)  # the kept chunk is embedded once
    assert_grads([p.grad for p in embedder.parameters()], want, rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_padding_forwards_change_nothing_but_the_count(embedder, chunk_size):
    """A process with fewer forwards than the others runs one-row padding forwards (GradCache: in both passes, with a
    zero gradient, last), so FSDP / ZeRO / DDP collectives stay in step; losses and gradients stay the same."""
    rows = rows_for(embedder, 3, seed=20)
    fn = CASES["qzhou"][1]
    packing = Packing(embedder.config.padding_side, embedder.tokenizer.pad_token_id, chunk_size=chunk_size,
                      merge=False)
    loss, want, own = step(embedder, rows, fn, packing, Engine(keep_last=False))
    forwards, calls = [0], []

    def counted(ids, mask):
        forwards[0] += 1
        return embedder(ids, mask)

    def hook(emb, grad, last):
        calls.append((emb.shape[0], float(grad.abs().sum()) == 0.0, last))
        emb.backward(grad)

    embedder.zero_grad()
    batch = pack_and_embed(rows, counted, packing, Engine(chunk_backward=hook, most_forwards=lambda n: n + 4))
    padded = fn(*batch.embeddings.values())
    batch.backward(padded)
    assert torch.equal(loss, padded.detach()) and len(batch.padding) == 4
    n = len(own.plan)
    assert forwards[0] == (2 * (n + 4) if chunk_size else n + 4)
    if chunk_size:
        assert [c for c in calls if c[1] and c[0] == 1] == calls[-4:] and len(calls) == n + 4
        assert [last for _, _, last in calls] == [False] * (n + 3) + [True]
    assert_grads([p.grad for p in embedder.parameters()], want, rtol=1e-5)
