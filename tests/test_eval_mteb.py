"""The mteb path, offline: local data injected into mteb's own task objects (mteb's metadata is bundled; only its
data download needs the hub). Our local metrics must equal mteb's on the same data, for every task type."""

from __future__ import annotations

import numpy as np
import pytest
from eval_support import BagOfWords, write_tasks

from qzhou.evaluation.runner import evaluate
from qzhou.evaluation.tasks import load_spec, load_task

mteb = pytest.importorskip("mteb", reason="mteb is in the eval extra (pip install qzhou[eval])")
from mteb.types import PromptType  # noqa: E402

from qzhou.evaluation.mteb_adapter import QzhouMtebModel, get_mteb_tasks, inject, mteb_scores  # noqa: E402

#: mteb rounds retrieval averages to 5 decimals; everything else must agree to float precision
TOLERANCE = {"Retrieval": 5e-6, "Reranking": 5e-6}


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("mteb_tasks"))


@pytest.mark.parametrize("kind", ["STS", "PairClassification", "Classification", "Clustering", "Retrieval",
                                  "Reranking"])
@pytest.mark.parametrize("rules", ["qzhou", "qwen3"])
def test_local_metrics_equal_mtebs_on_the_same_data(task_files, kind, rules):
    loaded = load_task(load_spec(task_files[kind]))
    ours = evaluate(BagOfWords(), [loaded], rules=rules, log=lambda _: None).tasks[0]
    theirs = mteb_scores(BagOfWords(), loaded, rules)
    shared = [k for k in ours.scores if k in theirs]
    assert ours.main_score in shared and len(shared) >= 2
    for k in shared:
        assert ours.scores[k] == pytest.approx(theirs[k], abs=TOLERANCE.get(kind, 1e-9)), k


def test_clustering_subsample_draws_equal_mtebs(task_files):
    """With a subsample, the subset and the bootstrap draws come from one random.Random(seed), as in mteb."""
    path = task_files["Clustering"].parent / "clu_half.yaml"
    path.write_text(task_files["Clustering"].read_text().replace("max_fraction: null", "max_fraction: 0.5"))
    loaded = load_task(load_spec(path))
    ours = evaluate(BagOfWords(), [loaded], log=lambda _: None).tasks[0]
    assert ours.texts_embedded == 20
    assert ours.scores["v_measure"] == pytest.approx(mteb_scores(BagOfWords(), loaded)["v_measure"], abs=1e-12)


def test_mteb_sees_the_same_texts_and_instructions(task_files):
    loaded = load_task(load_spec(task_files["Retrieval"]))
    bow = BagOfWords()
    mteb_scores(bow, loaded, "qzhou")
    by_instruction = {inst: set(texts) for inst, texts in bow.calls}
    assert by_instruction["Given a query, retrieve documents"] == set(loaded.data.queries.values())
    assert by_instruction[None] == set(loaded.data.docs.values())  # documents stay raw for retrieval


def test_undersampling_equals_mtebs(task_files):
    from datasets import Dataset

    from qzhou.evaluation import metrics

    labels = [f"l{i % 7}" for i in range(200)]
    task = mteb.get_task("Banking77Classification")
    ds = Dataset.from_dict({"text": [str(i) for i in range(200)], "label": labels})
    idxs, theirs = None, []
    for i in range(10):
        _, idxs, picked = task._undersample_data(ds, i, idxs)
        theirs.append(picked)
    assert metrics.mteb_undersample(labels, 10, task.samples_per_label, task.seed) == theirs


def test_a_real_tiny_model_scores_alike_through_mteb(task_files, base_dirs):
    """Same model, two harnesses: only batch composition differs, so scores agree to float noise."""
    from qzhou import Embedder

    e = Embedder.load(base_dirs["bert"], dtype="float32")
    for kind in ("STS", "Reranking"):
        loaded = load_task(load_spec(task_files[kind]))
        ours = evaluate(e, [loaded], log=lambda _: None).tasks[0]
        assert ours.main == pytest.approx(mteb_scores(e, loaded)[ours.main_score], abs=1e-4)


# ------------------------------------------------------------------------------------------------ instructions
@pytest.fixture(scope="module")
def benchmark_tasks():
    return {n: get_mteb_tasks([n]) for n in ("MTEB(eng, v2)", "MTEB(cmn, v1)", "MTEB(Multilingual, v2)",
                                               "MTEB(Code, v1)")}


def test_benchmarks_resolve_offline_with_their_published_sizes(benchmark_tasks):
    assert {n: len(t) for n, t in benchmark_tasks.items()} == {
        "MTEB(eng, v2)": 41, "MTEB(cmn, v1)": 31, "MTEB(Multilingual, v2)": 131, "MTEB(Code, v1)": 12}
    with pytest.raises(ValueError, match="neither an mteb benchmark nor an mteb task"):
        get_mteb_tasks(["MTEB(klingon, v9)"])


@pytest.mark.parametrize("rules", ["qzhou", "qwen3"])
def test_every_benchmark_task_gets_an_instruction(benchmark_tasks, rules):
    model = QzhouMtebModel(BagOfWords(), rules)
    for tasks in benchmark_tasks.values():
        for task in tasks:
            query = model.instruction(task.metadata, PromptType.query)
            assert isinstance(query, str) and query, task.metadata.name
            doc = model.instruction(task.metadata, PromptType.document)
            if "Retrieval" not in task.metadata.type:
                assert doc == model.instruction(task.metadata, None)  # symmetric outside retrieval


def test_instruction_choices_follow_the_published_rules():
    def instr(rules, name, prompt_type):
        return QzhouMtebModel(BagOfWords(), rules).instruction(mteb.get_task(name).metadata, prompt_type)

    banking = "Given a online banking query, find the corresponding intents"
    assert instr("qzhou", "Banking77Classification", None) == banking
    assert instr("qzhou", "SCIDOCS", PromptType.document) is None  # retrieval documents stay raw
    assert instr("qzhou", "ArguAna", PromptType.document) == "Given a claim, find documents that refute the claim"
    assert instr("qwen3", "STS12", None) == "Retrieve semantically similar text"
    assert instr("qzhou", "TwitterSemEval2015", None) == "Retrieve tweets that are semantically similar to the given tweet"
    assert instr("qwen3", "TwitterSemEval2015", None) == "Retrieve semantically similar text"
    assert instr("none", "Banking77Classification", None) is None
    # tasks outside the published tables get mteb's prompt for them (or its task-type default) under the rules
    rubq = mteb.get_task("RuBQReranking").metadata.prompt["query"]
    assert instr("qzhou", "RuBQReranking", PromptType.document) == instr("qwen3", "RuBQReranking", None) == rubq
    assert instr("qzhou", "AppsRetrieval", PromptType.query) == "Retrieve text based on user query."
    assert instr("qwen3", "AppsRetrieval", PromptType.document) is None
    extra = {"AppsRetrieval": {"type": "Retrieval", "qzhou": "Find code", "qzhou_symmetric": False, "qwen3": "Find code"}}
    own = QzhouMtebModel(BagOfWords(), "qwen3", extra=extra)  # a user's own table (load_user_tasks) wins
    assert own.instruction(mteb.get_task("AppsRetrieval").metadata, PromptType.query) == "Find code"


def test_encode_returns_rows_in_input_order_and_empty_texts_become_null(task_files):
    loaded = load_task(load_spec(task_files["STS"]))
    bow = BagOfWords()
    model = QzhouMtebModel(bow, "qzhou")
    task = inject(mteb.get_task("STSBenchmark"), loaded)
    from mteb._create_dataloaders import create_dataloader

    ds = task.dataset["test"].select_columns(["sentence1"]).rename_columns({"sentence1": "text"})
    ds = ds.add_item({"text": "  "})
    emb = model.encode(create_dataloader(ds, task_metadata=task.metadata, batch_size=4), task_metadata=task.metadata,
                       hf_split="test", hf_subset="default")
    texts = loaded.data.text1 + ["Null"]
    assert emb.shape == (len(texts), 32)
    assert np.allclose(emb, BagOfWords().encode(texts, instruction="Retrieve semantically similar text"))
    assert model.calls[-1] == ("STSBenchmark", "query", "Retrieve semantically similar text", len(set(texts)))
    assert model.mteb_model_meta.name.startswith("qzhou/") and model.mteb_model_meta.use_instructions


def test_run_mteb_converts_mtebs_results(task_files, tmp_path, monkeypatch):
    """`run_mteb` end to end through `mteb.evaluate`, with an injected task standing in for a hub download."""
    from qzhou.evaluation import mteb_adapter

    loaded = load_task(load_spec(task_files["STS"]))
    monkeypatch.setattr(mteb_adapter, "get_mteb_tasks", lambda names: [inject(mteb.get_task("STSBenchmark"), loaded)])
    results = mteb_adapter.run_mteb(BagOfWords(), ["STSBenchmark"], "qwen3", out=tmp_path)
    (task,) = results.tasks
    assert (task.name, task.type, task.main_score) == ("STSBenchmark", "STS", "cosine_spearman")
    local = evaluate(BagOfWords(), [loaded], rules="qwen3", log=lambda _: None).tasks[0]
    assert task.main == pytest.approx(local.main, abs=1e-9)
    assert task.instructions == {"query": "Retrieve semantically similar text",
                                 "document": "Retrieve semantically similar text"}
    assert list((tmp_path / "mteb").rglob("STSBenchmark.json"))  # mteb's own result file
