"""The multi-task sampler: proportions n^α (within statistical tolerance), the retrieval share η, one dataset per
batch, no repeated text in a batch with nothing dropped, determinism, and exact resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from qzhou.data.sampler import MultiTaskBatchSampler, dataset_probabilities

SIZES = [100, 400, 900, 1600]
TASKS = [True, False, True, False]  # counts towards the retrieval share


def test_probabilities_formula():
    p = dataset_probabilities(SIZES, TASKS, alpha=0.5)
    assert np.allclose(p, np.array([10, 20, 30, 40]) / 100)
    p = dataset_probabilities(SIZES, TASKS, alpha=0.5, retrieval_share=0.72)
    assert np.allclose(p, [0.72 * 10 / 40, 0.28 * 20 / 60, 0.72 * 30 / 40, 0.28 * 40 / 60])
    assert np.allclose(dataset_probabilities(SIZES, TASKS, alpha=1.0), np.array(SIZES) / 3000)
    with pytest.raises(ValueError, match="non-retrieval"):
        dataset_probabilities([5], [True], retrieval_share=0.5)
    with pytest.raises(ValueError, match="at least one row"):
        dataset_probabilities([5, 0], [False, False])


@pytest.mark.parametrize("share", [None, 0.72])
def test_drawn_proportions_within_tolerance(share):
    s = MultiTaskBatchSampler(SIZES, TASKS, [4] * 4, retrieval_share=share, seed=3)
    n = 20000
    counts = Counter(s.next_batch()[0] for _ in range(n))
    p = s.probabilities
    for d in range(4):
        sd = np.sqrt(p[d] * (1 - p[d]) / n)
        assert abs(counts[d] / n - p[d]) < 5 * sd
    if share:
        ret = (counts[0] + counts[2]) / n
        assert abs(ret - share) < 5 * np.sqrt(share * (1 - share) / n)


def test_no_repeated_text_in_a_batch_and_nothing_dropped():
    texts = [f"t{i % 7}" for i in range(30)]  # 7 distinct texts over 30 rows
    s = MultiTaskBatchSampler([30], [False], [5], seed=0, keys=lambda d, i: [texts[i]])
    seen = Counter()
    for _ in range(60):
        d, batch = s.next_batch()
        assert len({texts[i] for i in batch}) == len(batch) == 5
        seen.update(batch)
    # 300 draws over 30 rows: every row served about 10 times; deferral delays rows, never loses them
    assert set(seen) == set(range(30)) and min(seen.values()) >= 8


def test_each_epoch_visits_every_row_once():
    s = MultiTaskBatchSampler([10], [True], [5], seed=1)
    rows = [i for _ in range(4) for i in s.next_batch()[1]]
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10] != rows[10:]  # a fresh permutation per epoch


def test_deterministic_and_resumable():
    texts = [f"t{i % 13}" for i in range(200)]

    def make():
        return MultiTaskBatchSampler([200, 50, 80], [True, False, False], [8, 16, 4],
                                     retrieval_share=0.6, seed=11, keys=lambda d, i: [texts[i]] if d == 0 else [i])

    a, b = make(), make()
    first = [a.next_batch() for _ in range(50)]
    assert first == [b.next_batch() for _ in range(50)]
    state = a.state_dict()
    import json

    state = json.loads(json.dumps(state))  # survives a checkpoint file
    rest = [a.next_batch() for _ in range(100)]
    c = make()
    c.load_state_dict(state)
    assert [c.next_batch() for _ in range(100)] == rest
    with pytest.raises(ValueError, match="sampler state is for"):
        MultiTaskBatchSampler([1], [False], [1]).load_state_dict(state)


def test_sample_previews_exactly_what_training_draws(tmp_path, base_dirs, capsys, monkeypatch):
    """`qzhou data sample RECIPE --stage S` prints the batches the trainer then draws (same records, batch sizes,
    seed and in-batch de-duplication: here repeated queries that a batch must not hold twice)."""
    import json
    import re

    import yaml
    from test_trainer import recipe

    from qzhou.cli import main
    from qzhou.data.sampler import MultiTaskBatchSampler as Sampler
    from qzhou.training.recipe import load_recipe
    from qzhou.training.trainer import train

    path = recipe(tmp_path, base_dirs["qwen2"], log_with="none")
    rows = [json.loads(x) for x in (tmp_path / "data" / "ret.jsonl").read_text().splitlines()]
    for r in rows[6:]:
        r["query"] = rows[1]["query"]  # half the queries repeat one text
    (tmp_path / "data" / "ret.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = yaml.safe_load(path.read_text())
    raw["stages"] = raw["stages"][1:]  # stage2: three datasets, retrieval_share 0.5
    path.write_text(yaml.safe_dump(raw))
    assert main(["data", "sample", str(path), "--stage", "stage2", "--steps", "6", "--show", "6"]) == 0
    printed = [(m[1], [int(x) for x in m[2].split(", ")]) for m in re.finditer(r"step \d+: (\w+) rows \[(.*)\]",
                                                                                capsys.readouterr().out)]
    trained = []
    real = Sampler.next_batch

    def spy(self):
        d, batch = real(self)
        trained.append((["ret", "sts", "cls"][d], batch))
        return d, batch

    monkeypatch.setattr(Sampler, "next_batch", spy)
    train(load_recipe(path))
    assert printed == trained and len(trained) == 6
    queries = [[rows[i]["query"] for i in batch] for name, batch in trained if name == "ret"]
    assert queries and all(len(set(q)) == len(q) for q in queries)
