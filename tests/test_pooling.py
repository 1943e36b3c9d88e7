"""Pooling against brute-force loops over each row's real tokens, for left and right padding."""

from __future__ import annotations

import pytest
import torch

from qzhou.modeling.pooling import finalize, pool


def padded(lengths, side, L=6, D=5):
    torch.manual_seed(0)
    hidden = torch.randn(len(lengths), L, D)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "left":
            mask[i, L - n:] = 1
        else:
            mask[i, :n] = 1
    return hidden, mask


def brute(hidden, mask, mode):
    rows = []
    for h, m in zip(hidden, mask, strict=False):
        real = [h[t] for t in range(len(m)) if m[t] == 1]
        if mode == "mean":
            rows.append(sum(real) / len(real))
        elif mode == "last":
            rows.append(real[-1])
        else:
            rows.append(real[0])
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", ["mean", "last", "cls"])
def test_pool_matches_brute_force(side, mode):
    hidden, mask = padded([6, 3, 1, 4], side)
    assert torch.allclose(pool(hidden, mask, mode), brute(hidden, mask, mode), atol=1e-6)


def test_left_and_right_padding_pool_the_same_tokens():
    torch.manual_seed(0)
    real = [torch.randn(n, 4) for n in (2, 5, 3)]
    left = torch.zeros(3, 5, 4)
    right = torch.zeros(3, 5, 4)
    ml = torch.zeros(3, 5, dtype=torch.long)
    mr = torch.zeros(3, 5, dtype=torch.long)
    for i, r in enumerate(real):
        left[i, 5 - len(r):], ml[i, 5 - len(r):] = r, 1
        right[i, :len(r)], mr[i, :len(r)] = r, 1
    for mode in ("mean", "last", "cls"):
        assert torch.allclose(pool(left, ml, mode), pool(right, mr, mode), atol=1e-6)


def test_matryoshka_truncates_then_normalises():
    x = torch.tensor([[3.0, 4.0, 12.0]])
    out = finalize(x, dim=2)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8]]))  # normalising first would give [3/13, 4/13]
    assert torch.allclose(finalize(x).norm(dim=-1), torch.ones(1))
    assert torch.equal(finalize(x, normalize=False), x)


@pytest.mark.parametrize("dim", [0, 4])
def test_dim_out_of_range(dim):
    with pytest.raises(ValueError, match="hidden size 3"):
        finalize(torch.ones(1, 3), dim=dim)


def test_unknown_pooling():
    with pytest.raises(ValueError, match="pooling must be"):
        pool(torch.ones(1, 2, 3), torch.ones(1, 2), "max")
