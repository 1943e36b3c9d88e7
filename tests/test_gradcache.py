"""GradCache gives the same parameter gradients (and loss) as the plain full-batch computation, for every loss."""

from __future__ import annotations

import pytest
import torch

from qzhou import Embedder
from qzhou.training.gradcache import gradcache_backward
from qzhou.training.objectives import LossConfig, classification_loss, retrieval_loss, sts_loss

WORDS = "the cat dog fox bird fish runs jumps sleeps eats quick brown lazy red blue green big small".split()


def texts(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(2, 9, (1,), generator=g)),), generator=g))
            for _ in range(n)]


@pytest.fixture(scope="module")
def embedder(base_dirs):
    e = Embedder.load(base_dirs["qwen2"], dtype="float32", attention="bidirectional", pooling="mean")
    e.train()
    for m in e.modules():  # dropout off: plain and chunked runs then see identical computations
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return e


def feats(e, strs):
    t = e.tokenizer(strs, padding=True, return_tensors="pt")
    return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}


CASES = {
    "qzhou": (3, lambda cfg, q, p, n, aux: retrieval_loss(cfg, q, p, n)),
    "qwen3": (3, lambda cfg, q, p, n, aux: retrieval_loss(LossConfig(retrieval="qwen3", tau=0.05), q, p, n,
                                                          aux["pos_keys"], aux["neg_keys"])),
    "cosent": (2, lambda cfg, a, b, aux: sts_loss(cfg, a, b, aux["scores"])),
    "classification": (3, lambda cfg, t, p, n, aux: classification_loss(cfg, t, p, n, aux["labels"], aux["neg_labels"])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcache_equals_plain(embedder, name):
    n_groups, fn = CASES[name]
    B = 6
    groups = [feats(embedder, texts(B * (2 if g == 2 else 1), seed=g)) for g in range(n_groups)]
    scores = torch.rand(B, generator=torch.Generator().manual_seed(7))
    aux = {"pos_keys": torch.arange(B), "neg_keys": torch.arange(B, 3 * B), "scores": scores,
           "labels": torch.tensor([0, 1, 0, 2, 1, 2]), "neg_labels": torch.tensor([1, 2, 0, 1, 1, 0, 0, 2, 2, 0, 1, 1])}
    cfg = LossConfig(tau=0.05)

    def embed(f):
        return embedder(f["input_ids"], f["attention_mask"])

    def loss_fn(*embs):
        return fn(cfg, *embs, aux)

    params = [p for p in embedder.parameters() if p.requires_grad]
    embedder.zero_grad()
    plain = loss_fn(*[embed(g) for g in groups])
    plain.backward()
    expected = [p.grad.clone() for p in params]
    embedder.zero_grad()
    loss = gradcache_backward(embed, groups, loss_fn, chunk_size=2)
    assert torch.allclose(loss, plain.detach(), atol=1e-6)
    for p, g in zip(params, expected):  # fp32: chunked matmuls sum in another order, so relative to the scale
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5 * float(g.abs().max()) + 1e-7)


@pytest.mark.parametrize("keep_last", [True, False])
def test_engine_backward_hook_and_keep_last(embedder, keep_last):
    """The `backward` hook (DeepSpeed's engine.backward) receives every chunk once, `last` only on the final one,
    and gives the default's gradients; keep_last=False (FSDP) re-embeds the last chunk and changes nothing else."""
    n_groups, fn = CASES["qzhou"]
    groups = [feats(embedder, texts(6 * (2 if g == 2 else 1), seed=10 + g)) for g in range(n_groups)]
    cfg = LossConfig(tau=0.05)
    calls: list[bool] = []
    forwards = [0]

    def embed(f):
        forwards[0] += 1
        return embedder(f["input_ids"], f["attention_mask"])

    def loss_fn(*embs):
        return fn(cfg, *embs, {})

    params = [p for p in embedder.parameters() if p.requires_grad]
    embedder.zero_grad()
    gradcache_backward(embed, groups, loss_fn, chunk_size=4)
    expected = [p.grad.clone() for p in params]

    def hook(emb, grad, last):
        calls.append(last)
        (emb * grad).sum().backward()  # what the DeepSpeed hook hands to engine.backward

    embedder.zero_grad()
    forwards[0] = 0
    gradcache_backward(embed, groups, loss_fn, chunk_size=4, backward=hook, keep_last=keep_last)
    chunks = 2 + 2 + 3  # 6, 6 and 12 rows in chunks of 4
    assert calls == [False] * (chunks - 1) + [True]
    assert forwards[0] == (2 * chunks - 1 if keep_last else 2 * chunks)  # the kept chunk is embedded once
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6 * float(g.abs().max()) + 1e-8)


def test_padding_chunks_change_nothing_but_the_count(embedder):
    """chunks_per_group above a group's own chunks adds one-row chunks: a forward in each pass and a zero-gradient
    backward each (what keeps FSDP / ZeRO collectives in step across processes), and the same gradients."""
    n_groups, fn = CASES["qzhou"]
    groups = [feats(embedder, texts(6 * (2 if g == 2 else 1), seed=20 + g)) for g in range(n_groups)]
    cfg = LossConfig(tau=0.05)
    forwards, calls = [0], []

    def embed(f):
        forwards[0] += 1
        return embedder(f["input_ids"], f["attention_mask"])

    def loss_fn(*embs):
        return fn(cfg, *embs, {})

    def hook(emb, grad, last):
        calls.append((emb.shape[0], float(grad.abs().sum()) == 0.0, last))
        emb.backward(grad)

    params = [p for p in embedder.parameters() if p.requires_grad]
    embedder.zero_grad()
    loss = gradcache_backward(embed, groups, loss_fn, chunk_size=4, keep_last=False)
    expected = [p.grad.clone() for p in params]
    embedder.zero_grad()
    forwards[0] = 0
    padded = gradcache_backward(embed, groups, loss_fn, chunk_size=4, backward=hook, chunks_per_group=[3, 3, 5])
    assert torch.equal(loss, padded)
    assert forwards[0] == 2 * (7 + 4)  # 7 real chunks + 4 padding ones, each embedded in both passes
    assert [c for c in calls if c[1] and c[0] == 1] == calls[-4:] and len(calls) == 11  # padding last, zero grads
    assert [last for _, _, last in calls] == [False] * 10 + [True]
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7 * float(g.abs().max()) + 1e-9)
