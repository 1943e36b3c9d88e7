"""The packer's plan and padding: length runs are the cheapest cut (against every cut), a plan covers every row once
(merged, per role, chunked), rows are padded once on the model's side, and embedding rows in length runs equals one
forward over the padded batch (embeddings and gradients), for left (decoders) and right (BERT) padding."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from test_trainer import sent

from qzhou.modeling.embedder import Embedder
from qzhou.training.packing import Packing, length_runs, pack_and_embed, pad, plan_forwards


def test_length_runs_is_the_cheapest_cut():
    """Against every way to cut the rows (sorted by length) into at most `most` contiguous runs."""
    rng = random.Random(0)

    def cost(runs, lengths, overhead):
        return sum(len(r) * max(lengths[i] for i in r) + overhead for r in runs)

    for _ in range(60):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 9))]
        most, overhead = rng.randint(1, 4), rng.choice([0, 16, 64])
        runs = length_runs(lengths, most, overhead)
        assert sorted(i for r in runs for i in r) == list(range(len(lengths))) and 1 <= len(runs) <= most
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths, overhead)
                   for k in range(min(most, len(order)))
                   for cuts in itertools.combinations(range(1, len(order)), k))
        assert cost(runs, lengths, overhead) == best, (lengths, most, overhead)


def test_plans_cover_every_row_once():
    rng = random.Random(1)
    for _ in range(50):
        lengths = [[rng.randint(1, 30) for _ in range(rng.randint(0, 7))] for _ in range(3)]
        lengths[0].append(5)  # a batch always has rows
        total = sum(map(len, lengths))
        for merge, buckets, chunk in itertools.product((True, False), (1, 3), (None, 2)):
            plan = plan_forwards(lengths, Packing(merge=merge, buckets=buckets, chunk_size=chunk))
            assert sorted(i for f in plan for i in f) == list(range(total))
            assert all(f for f in plan) and (chunk is None or max(map(len, plan)) <= chunk)
            if not merge:  # one forward per non-empty role (then chunks of it): no forward mixes roles
                starts = [0, len(lengths[0]), len(lengths[0]) + len(lengths[1]), total]
                assert all(len({next(r for r in range(3) if starts[r] <= i < starts[r + 1]) for i in f}) == 1
                           for f in plan)
                if chunk is None:
                    assert len(plan) == sum(1 for x in lengths if x)
            elif buckets == 1 and chunk is None:
                assert plan == [list(range(total))]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_once_on_the_side(side):
    ids, mask = pad([[5, 6, 7], [8], [9, 10]], side, pad_id=0)
    want = [[5, 6, 7], [0, 0, 8], [0, 9, 10]] if side == "left" else [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert ids.tolist() == want and mask.tolist() == [[int(x != 0) for x in row] for row in want]


@pytest.mark.parametrize("arch,attention,pooling", [("qwen2", "bidirectional", "mean"), ("qwen3", "causal", "last"),
                                                    ("bert", None, "cls")])
def test_length_runs_embed_like_one_forward(base_dirs, arch, attention, pooling):
    """Rows in 3 length runs: embeddings and parameter gradients equal one forward over the padded batch, and the
    runs compute far fewer tokens."""
    e = Embedder.load(base_dirs[arch], dtype="float32", device="cpu",
                      **{k: v for k, v in (("attention", attention), ("pooling", pooling)) if v})
    e.eval()
    texts = [sent(i, n) for i, n in enumerate([1, 9, 2, 14, 3, 3, 20, 1, 6])]
    rows = {"a": e.tokenizer(texts[:4])["input_ids"], "b": e.tokenizer(texts[4:])["input_ids"]}
    ids, mask = pad(rows["a"] + rows["b"], e.config.padding_side, e.tokenizer.pad_token_id)
    weights = torch.randn(len(texts), e.hidden_size)
    plain = e(ids, mask)
    (plain * weights).sum().backward()
    want = [None if p.grad is None else p.grad.clone() for p in e.parameters()]  # (BERT's pooler: unused)
    e.zero_grad()
    packing = Packing(e.config.padding_side, e.tokenizer.pad_token_id, buckets=3, overhead=0)
    batch = pack_and_embed(rows, e, packing)
    got = torch.cat([batch.embeddings["a"], batch.embeddings["b"]])
    batch.backward((got * weights).sum())
    torch.testing.assert_close(got, plain, atol=2e-5, rtol=1e-4)
    for g, w in zip((p.grad for p in e.parameters()), want):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert len(batch.plan) == 3 and batch.computed_tokens < ids.numel() / 2
