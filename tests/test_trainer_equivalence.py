"""The trainer's step computes the same thing whatever the packing: plain (one forward per role), merged forwards,
length buckets and GradCache, and their combinations, give the same losses and parameter gradients (fp32, within
1e-5 relative) on all three task types, with dropout on.

Dropout whose masks follow the batch layout can only agree between runs with the same forwards, so two checks:
- every packing, with a dropout whose mask is a function of the row (its token ids), the layer and the position:
  merging, bucketing and chunking rows then cannot change a row's mask, and any mix-up of rows, padding or
  gradients shows;
- the model's own attention dropout (torch's RNG): length buckets with and without GradCache run the same
  forwards, so only GradCache's RNG replay can make their second pass draw the first pass's masks. The same run
  without the replay differs (the check can fail).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import edit_json, write_base
from test_trainer import sent

from qzhou.training import trainer as trainer_mod
from qzhou.training.objectives import REGISTRY, Objective
from qzhou.training.packing import RandState
from qzhou.training.recipe import load_recipe
from qzhou.training.trainer import train

P = 0.2  # dropout probability


def write_data(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ret = [{"query": sent(i, 1 + i % 4), "pos": [sent(i + 1, 2 + i % 7)], "neg": [sent(i + 5, 9), sent(i + 9, 1)]}
           for i in range(12)]
    sts = [{"text1": sent(i, 1 + i % 6), "text2": sent(i + 2, 3), "score": float(i % 5)} for i in range(12)]
    cls = [{"query": sent(i, 1 + i % 5), "pos": [sent(i + 3, 8)], "neg": [sent(i + 4, 2)], "label": i % 3,
            "neg_labels": [(i + 1) % 3]} for i in range(12)]
    for name, rows in (("ret", ret), ("sts", sts), ("cls", cls)):
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def write_recipe(root: Path, base: Path, name: str, **extra) -> Path:
    raw = {"model": {"base": str(base), "attention": "bidirectional", "pooling": "mean"},
           "datasets": [{"name": "ret", "path": "data/ret.jsonl", "task": "retrieval", "instruction": "Find it"},
                        {"name": "sts", "path": "data/sts.jsonl", "task": "sts"},
                        {"name": "cls", "path": "data/cls.jsonl", "task": "classification", "instruction": "Sort"}],
           "stages": [{"name": "s", "datasets": ["ret", "sts", "cls"], "steps": 5, "lr": 1e-3}],
           "batch_size": {"retrieval": 4, "sts": 5, "classification": 4}, "hard_negatives": 2,
           "output_dir": str(root / name), "query_max_length": 16, "passage_max_length": 24, "max_grad_norm": 1e9,
           "log_with": "none", **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def row_keyed_dropout(model) -> None:
    """Dropout after every decoder layer with a mask drawn from (row token ids, layer, position in the row)."""
    rows: dict[str, torch.Tensor] = {}

    def remember(module, args, kwargs):
        ids, mask = (list(args) + [kwargs.get("input_ids"), kwargs.get("attention_mask")])[:2] if len(args) >= 2 \
            else (kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask"))
        rows["ids"], rows["mask"] = ids, mask

    def drop(layer: int):
        def hook(module, args, output):
            if not module.training:
                return output
            masks = []
            for ids, mask in zip(rows["ids"], rows["mask"]):
                real = mask.bool()
                key = hashlib.blake2b(repr((ids[real].tolist(), layer)).encode(), digest_size=7).digest()
                g = torch.Generator().manual_seed(int.from_bytes(key, "little"))
                full = torch.ones(mask.shape[0], output.shape[-1])
                full[real] = (torch.rand(int(real.sum()), output.shape[-1], generator=g) >= P).float() / (1 - P)
                masks.append(full)
            return output * torch.stack(masks).to(output.dtype)
        return hook

    model.register_forward_pre_hook(remember, with_kwargs=True)
    for n, layer in enumerate(model.backbone.layers):
        layer.register_forward_hook(drop(n))


def run(path: Path, monkeypatch, dropout=None) -> tuple[list[tuple[str, float]], list[torch.Tensor]]:
    """Train the recipe; -> (task, loss) per step and the parameter gradients each optimizer step saw."""
    losses, grads = [], []
    build = Objective.build_model.__func__

    def build_with_dropout(cls, cfg, source, first_stage):
        model = build(cls, cfg, source, first_stage)
        if dropout:
            dropout(model)
        return model

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            grads.append(torch.cat([p.grad.flatten() for group in self.param_groups for p in group["params"]]))
            return super().step(closure)

    monkeypatch.setattr(Objective, "build_model", classmethod(build_with_dropout))
    monkeypatch.setattr(trainer_mod, "adamw", lambda params, lr, weight_decay: Recording(params, lr=lr,
                                                                                        weight_decay=weight_decay))
    for kind in REGISTRY.values():
        def recorded(self, embeddings, labels, _loss=kind.loss):
            loss = _loss(self, embeddings, labels)
            losses.append((self.task, float(loss.detach())))
            return loss
        monkeypatch.setattr(kind, "loss", recorded)
    train(load_recipe(path))
    monkeypatch.undo()
    return losses, grads


def assert_same(a, b, what: str, tol: float = 1e-5) -> None:
    (la, ga), (lb, gb) = a, b
    assert [t for t, _ in la] == [t for t, _ in lb], what
    for (task, x), (_, y) in zip(la, lb):
        assert abs(x - y) <= tol * abs(y), (what, task, x, y)
    assert len(ga) == len(gb)
    for step, (x, y) in enumerate(zip(ga, gb)):
        assert float((x - y).norm()) <= tol * float(y.norm()), (what, step, float((x - y).norm() / y.norm()))


PACKINGS = {
    "merged": {"merge_forwards": True, "length_buckets": 1},
    "buckets": {"merge_forwards": True, "length_buckets": 3},
    "gradcache-plain": {"merge_forwards": False, "chunk_size": 3},
    "gradcache-merged": {"merge_forwards": True, "length_buckets": 1, "chunk_size": 3},
    "gradcache-buckets": {"merge_forwards": True, "length_buckets": 3, "chunk_size": 3},
}


def test_every_packing_trains_the_same(tmp_path, base_dirs, monkeypatch):
    write_data(tmp_path / "data")
    base = base_dirs["qwen2"]
    plain = run(write_recipe(tmp_path, base, "plain", merge_forwards=False), monkeypatch, row_keyed_dropout)
    assert {t for t, _ in plain[0]} == {"retrieval", "sts", "classification"}  # every task type is covered
    no_dropout = run(write_recipe(tmp_path, base, "p0", merge_forwards=False), monkeypatch)
    assert abs(no_dropout[0][0][1] - plain[0][0][1]) > 1e-3  # the dropout is really on
    for name, extra in PACKINGS.items():
        assert_same(run(write_recipe(tmp_path, base, name, **extra), monkeypatch, row_keyed_dropout), plain, name)
    forwards = [json.loads(x)["padded_tokens"] for x in (tmp_path / "buckets" / "s" / "losses.jsonl").open()]
    merged = [json.loads(x)["padded_tokens"] for x in (tmp_path / "merged" / "s" / "losses.jsonl").open()]
    assert sum(forwards) < sum(merged)  # buckets really cut padding


@pytest.fixture(scope="module")
def dropout_base(tmp_path_factory) -> Path:
    folder = write_base(tmp_path_factory.mktemp("dropout") / "qwen2", "qwen2")
    edit_json(folder / "config.json", attention_dropout=0.3)
    return folder


def test_gradcache_replays_the_models_own_dropout(tmp_path, dropout_base, monkeypatch):
    write_data(tmp_path / "data")
    buckets = {"merge_forwards": True, "length_buckets": 3}
    plain = run(write_recipe(tmp_path, dropout_base, "plain", **buckets), monkeypatch)
    cached = run(write_recipe(tmp_path, dropout_base, "cached", chunk_size=64, **buckets), monkeypatch)
    assert_same(cached, plain, "gradcache with the same forwards")
    monkeypatch.setattr(RandState, "restore", lambda self: None)
    unreplayed = run(write_recipe(tmp_path, dropout_base, "unreplayed", chunk_size=64, **buckets), monkeypatch)
    with pytest.raises(AssertionError):
        assert_same(unreplayed, plain, "gradcache without the RNG replay")
