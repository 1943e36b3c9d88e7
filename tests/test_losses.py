"""Each loss against a brute-force loop written from the published formula: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qzhou.losses import class_masked_infonce, cosent, qwen3_infonce, qzhou_infonce


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


def check_grads(fast, slow, inputs):
    gf = torch.autograd.grad(fast, inputs, retain_graph=True)
    gs = torch.autograd.grad(slow, inputs)
    for a, b in zip(gf, gs):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-7)


def brute_qzhou(q, pos, neg, tau):
    docs = list(pos) + list(neg)
    total = 0
    for i in range(len(q)):
        num = torch.exp(F.cosine_similarity(q[i], pos[i], dim=0) / tau)
        z = num + sum(torch.exp(F.cosine_similarity(q[i], d, dim=0) / tau) for k, d in enumerate(docs) if k != i)
        z = z + sum(torch.exp(F.cosine_similarity(q[i], q[j], dim=0) / tau) for j in range(len(q)) if j != i)
        total = total - torch.log(num / z)
    return total / len(q)


@pytest.mark.parametrize("k", [0, 2])
def test_qzhou_infonce(k):
    q, pos, neg = leaves((4, 8), (4, 8), (4 * k, 8))
    fast, slow = qzhou_infonce(q, pos, neg, tau=0.5), brute_qzhou(q, pos, neg, 0.5)
    assert torch.allclose(fast, slow)
    check_grads(fast, slow, [q, pos, neg] if k else [q, pos])


def brute_qwen3(q, pos, neg, tau, margin, keys):
    docs = list(pos) + list(neg)
    total = 0
    for i in range(len(q)):
        sp = F.cosine_similarity(q[i], pos[i], dim=0)
        limit = float(sp.detach()) + margin
        z = torch.exp(sp / tau)
        for k, d in enumerate(docs):
            if k == i or keys[k] == keys[i]:
                continue
            s = F.cosine_similarity(q[i], d, dim=0)
            if float(s.detach()) <= limit:
                z = z + torch.exp(s / tau)
            s = F.cosine_similarity(pos[i], d, dim=0)
            if float(s.detach()) <= limit:
                z = z + torch.exp(s / tau)
        for j in range(len(q)):
            s = F.cosine_similarity(q[i], q[j], dim=0)
            if j != i and float(s.detach()) <= limit:
                z = z + torch.exp(s / tau)
        total = total - (sp / tau - torch.log(z))
    return total / len(q)


def test_qwen3_infonce_with_margin_and_duplicate_text_mask():
    q, pos, neg = leaves((5, 6), (5, 6), (10, 6), seed=1)
    with torch.no_grad():  # make some negatives near-copies of positives so the margin mask fires
        neg[0] = pos[0] * 1.01 + 0.01
        q[3] = pos[1] * 0.99
    keys = torch.arange(15)
    keys[7] = keys[2]  # document 7 has the same text as positive 2
    fast = qwen3_infonce(q, pos, neg, tau=0.3, margin=0.1, doc_keys=keys)
    slow = brute_qwen3(q, pos, neg, 0.3, 0.1, keys.tolist())
    assert torch.allclose(fast, slow)
    check_grads(fast, slow, [q, pos, neg])
    assert not torch.allclose(fast, qwen3_infonce(q, pos, neg, tau=0.3, margin=10.0))  # the mask mattered


def brute_cosent(a, b, labels, tau):
    s = [cos(a[i], b[i]) for i in range(len(a))]
    total = 1.0
    for i in range(len(a)):
        for j in range(len(a)):
            if labels[i] > labels[j]:
                total += math.exp((s[j] - s[i]) / tau)
    return math.log(total)


def test_cosent_value_and_gradient():
    a, b = leaves((6, 5), (6, 5), seed=2)
    labels = torch.tensor([0.0, 2.5, 5.0, 2.5, 1.0, 4.0], dtype=torch.float64)
    fast = cosent(a, b, labels, tau=0.05)
    assert math.isclose(float(fast), brute_cosent(a.detach(), b.detach(), labels.tolist(), 0.05), rel_tol=1e-9)
    s = F.cosine_similarity(a, b, dim=-1) / 0.05
    terms = [s[j] - s[i] for i in range(6) for j in range(6) if labels[i] > labels[j]]
    slow = torch.logsumexp(torch.stack([s.new_zeros(())] + terms), 0)
    check_grads(fast, slow, [a, b])
    assert float(cosent(a, b, torch.ones(6, dtype=torch.float64))) == 0.0  # no ordered pair: log(1)


def brute_class(t, p, n, labels, neg_labels, tau, N):
    total = 0
    B = len(t)
    for i in range(B):
        num = torch.exp(F.cosine_similarity(t[i], p[i], dim=0) / tau)
        z = num
        for j in range(B):
            if j != i and labels[j] != labels[i]:
                z = z + torch.exp(F.cosine_similarity(t[i], t[j], dim=0) / tau)
            for m in range(N):
                if neg_labels[j * N + m] != labels[i]:
                    z = z + torch.exp(F.cosine_similarity(t[i], n[j * N + m], dim=0) / tau)
        total = total - torch.log(num / z)
    return total / B


def test_class_masked_infonce():
    t, p, n = leaves((5, 7), (5, 7), (10, 7), seed=3)
    labels = torch.tensor([0, 1, 0, 2, 1])
    neg_labels = torch.tensor([1, 2, 0, 2, 1, 1, 0, 1, 0, 2])  # row j·2+m is anchor j's m-th negative
    fast = class_masked_infonce(t, p, n, labels, neg_labels, tau=0.4)
    slow = brute_class(t, p, n, labels.tolist(), neg_labels.tolist(), 0.4, 2)
    assert torch.allclose(fast, slow)
    check_grads(fast, slow, [t, p, n])
