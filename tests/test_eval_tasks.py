"""Local YAML tasks: one of each type on tiny data (every reader format), the built-in suite's files, instructions
per side and rule set, embedding each distinct text once, and clear errors for bad task files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from eval_support import BagOfWords, write_tasks

from qzhou.evaluation.runner import MAIN_SCORE, EmbeddingCache, evaluate
from qzhou.evaluation.tasks import (
    Corpus,
    Labeled,
    Pairs,
    builtin_tasks,
    load_spec,
    load_task,
    resolve_tasks,
)

pytest.importorskip("sklearn", reason="scikit-learn is in the eval extra")


@pytest.fixture(scope="module")
def task_files(tmp_path_factory) -> dict[str, Path]:
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def test_each_type_loads_its_format(task_files):
    loaded = {kind: load_task(load_spec(path)) for kind, path in task_files.items()}
    sts = loaded["STS"].data
    assert isinstance(sts, Pairs) and len(sts.text1) == 30 and sts.values.dtype == np.float64
    pairs = loaded["PairClassification"].data
    assert isinstance(pairs, Pairs) and set(pairs.values.tolist()) == {0.0, 1.0}
    cls = loaded["Classification"]
    assert isinstance(cls.data, Labeled) and (len(cls.train.texts), len(cls.data.texts)) == (42, 18)
    clu = loaded["Clustering"].data
    assert isinstance(clu, Labeled) and set(clu.labels) == {"0", "1"} and len(clu.texts[0].split()) == 8
    ret = loaded["Retrieval"].data
    assert isinstance(ret, Corpus) and len(ret.docs) == 24 and len(ret.queries) == 8
    assert ret.docs["1"].startswith("Title 1 ") and "1 2 3" not in ret.docs["1"]  # .X cross-refs are not text
    assert ret.qrels["1"] == {"1": 1, "2": 1} and ret.candidates is None
    rer = loaded["Reranking"].data
    assert isinstance(rer, Corpus) and len(rer.queries) == 7 and len(rer.qrels) == 6 and rer.dropped_queries == 1
    assert all(len(c) == 5 for c in rer.candidates.values())
    assert all(len(h) == 64 for h in loaded["STS"].files.values())  # sha256 of every file read


def test_each_type_evaluates_end_to_end(task_files):
    results = evaluate(BagOfWords(), list(task_files.values()), rules="qzhou", log=lambda _: None)
    assert [t.type for t in results.tasks] == list(task_files)
    for t in results.tasks:
        assert t.main_score == MAIN_SCORE[t.type] and 0.0 <= t.main <= 1.0, t
        assert t.texts_embedded > 0 and t.files
    by = {t.type: t for t in results.tasks}
    assert by["STS"].main > 0.8 and by["PairClassification"].main > 0.8  # bag of words sees the designed overlap
    assert by["Retrieval"].scores["recall_at_100"] == 1.0  # 24 documents: everything is retrieved
    assert by["Classification"].protocol == {"n_experiments": 3, "samples_per_label": 4, "max_iter": 100, "seed": 42}
    assert by["Retrieval"].instructions == {"query": "Given a query, retrieve documents", "document": None}
    assert by["STS"].instructions["document"] == by["STS"].instructions["query"]  # symmetric under qzhou rules


def test_a_real_tiny_model_evaluates(task_files, base_dirs):
    from qzhou import Embedder

    e = Embedder.load(base_dirs["bert"], dtype="float32")
    results = evaluate(e, [task_files["STS"], task_files["Retrieval"]], rules="qwen3", log=lambda _: None)
    assert results.model["pooling"] == e.config.pooling and results.model["info"]["architecture"] == "BertModel"
    assert results.tasks[0].instructions["query"] == "Retrieve semantically similar text"  # qwen3: STS always
    assert np.isfinite([t.main for t in results.tasks]).all()


def test_each_distinct_text_is_embedded_once_per_run(task_files):
    bow = BagOfWords()
    cache = EmbeddingCache(bow)
    a = cache(["x y", "x y", "z"], "inst")
    b = cache(["z", "x y", "w"], "inst")
    assert bow.calls == [("inst", ["x y", "z"]), ("inst", ["w"])] and cache.encoded == 3
    assert np.array_equal(a[0], a[1]) and np.array_equal(a[2], b[0])
    cache(["z"], None)  # another instruction is another text
    assert cache.encoded == 4
    bow = BagOfWords()
    evaluate(bow, [task_files["STS"]], rules="none", log=lambda _: None)
    embedded = [t for _, texts in bow.calls for t in texts]
    assert len(embedded) == len(set(embedded)) and all(inst is None for inst, _ in bow.calls)


def test_instructions_per_side_and_rules(task_files):
    ret = load_spec(task_files["Retrieval"])
    assert ret.instruction_for("query", "qwen3") == "Given a query, retrieve documents"
    assert ret.instruction_for("document", "qwen3") is None and ret.instruction_for("query", "none") is None
    rer = load_spec(task_files["Reranking"])
    assert rer.instruction_for("document", "qzhou") == "Given a question, retrieve answers"  # QZhou: symmetric
    pairs = load_spec(task_files["PairClassification"])
    assert pairs.instruction_for("query", "qzhou") == "Retrieve paraphrases"
    assert pairs.instruction_for("query", "qwen3") == "Retrieve semantically similar text"
    suite = resolve_tasks(["Banking77Classification"], data_root="/nonexistent")[0]
    assert suite.instruction_for("document", "qzhou") == "Given a online banking query, find the corresponding intents"
    with pytest.raises(ValueError, match="rules"):
        suite.instruction_for("query", "e5")


def test_builtin_suite_files_parse_and_resolve(tmp_path):
    names = list(builtin_tasks())
    assert names == ["SICK-R", "STSBenchmark", "STSB", "MSRP", "Banking77Classification", "AGNewsClustering", "CISI",
                     "TrecQA"]
    specs = resolve_tasks(["suite"], data_root=tmp_path)
    assert [s.name for s in specs] == names and specs[1].path(specs[1].data) == tmp_path / "stsb" / "sts-test.csv"
    assert [s.name for s in resolve_tasks(["sick-r", "stsb", "sts_benchmark"], data_root=tmp_path)] == [
        "SICK-R", "STSB", "STSBenchmark"]
    with pytest.raises(FileNotFoundError, match="built-in: suite, SICK-R, STSBenchmark"):
        resolve_tasks(["STS12"])
    with pytest.raises(FileNotFoundError, match="set --data-root or .QZHOU_DATA"):
        load_task(specs[1])
    with pytest.raises(ValueError, match="given twice"):
        evaluate(BagOfWords(), ["STSB", "stsb"], data_root=tmp_path)


# ------------------------------------------------------------------------------------------------ bad task files
def write(tmp_path: Path, yaml_text: str, name: str = "t.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml_text.lstrip())
    return p


STS_YAML = """
name: Bad
type: STS
data: {path: d.tsv, format: tsv, columns: {text1: s1, text2: s2, score: score}}
"""


@pytest.mark.parametrize("yaml_text, error, match", [
    ("name: X\ntype: Regression\ndata: {path: d.tsv, columns: {text: 0}}\n", ValueError,
     r"t.yaml: type: Input should be 'STS', 'PairClassification'"),
    ("name: X\ntype: STS\ndata: {path: d.tsv, columns: {text1: 0, text2: 1, score: 2}}\nsplits: test\n", ValueError,
     r"t.yaml: splits: Extra inputs are not permitted"),
    ("name: X\ntype: STS\ndata: {path: d.tsv, columns: {text1: 0, text2: 1}}\n", ValueError,
     r"missing column role\(s\) \['score'\]; STS data takes \{text1, text2, score\}"),
    ("name: X\ntype: STS\ndata: {path: d.tsv, columns: {text1: 0, text2: 1, score: 2, label: 3}}\n", ValueError,
     r"unknown column role\(s\) \['label'\]"),
    ("name: X\ntype: Classification\ndata: {path: d.tsv, columns: {text: 0, label: 1}}\n", ValueError,
     r"type Classification needs a 'train' source"),
    ("name: X\ntype: STS\ntrain: {path: d.tsv, columns: {text: 0, label: 1}}\n"
     "data: {path: d.tsv, columns: {text1: 0, text2: 1, score: 2}}\n", ValueError, r"STS takes no 'train' source"),
    ("name: X\ntype: STS\ninstructions_from: NoSuchTask\ndata: {path: d.tsv, columns: {text1: 0, text2: 1, score: 2}}\n",
     ValueError, r"no instruction for task 'NoSuchTask'"),
    ("name: X\ntype: Clustering\nprotocol: {max_documents: 10, max_fraction: 0.1}\ndata: {path: d.tsv, columns: {text: 0, label: 1}}\n",
     ValueError, r"give max_fraction or max_documents, not both"),
    ("name: X\ntype: STS\nprotocol: {seed: 1}\ndata: {path: d.tsv, columns: {text1: 0, text2: 1, score: 2}}\n",
     ValueError, r"type STS takes no protocol options"),
    ("- just\n- a list\n", ValueError, r"t.yaml: a task file is a mapping"),
    ("name: X\ntype: Classification\nprotocol: {n_experiment: 3}\ntrain: {path: d.tsv, columns: {text: 0, label: 1}}\n"
     "data: {path: d.tsv, columns: {text: 0, label: 1}}\n", ValueError,
     r"t.yaml: protocol.n_experiment: Extra inputs are not permitted \(Classification protocol options: n_experiments"),
])
def test_bad_task_files_name_file_and_field(tmp_path, yaml_text, error, match):
    with pytest.raises(error, match=match):
        load_spec(write(tmp_path, yaml_text))


@pytest.mark.parametrize("data, yaml_text, match", [
    ("s1\ts2\tscore\na\tb\t1\n", STS_YAML.replace("score: score", "score: gold"),
     r"d.tsv: column 'gold' \(for score\) is not in the header; the header has: s1, s2, score"),
    ("s1\ts2\tscore\na\tb\t1\nc\td\n", STS_YAML,
     r"d.tsv:3: field 'score' wants column 2 but the row has 2 column\(s\)"),
    ("s1\ts2\tscore\na\tb\tfive\n", STS_YAML, r"d.tsv:2: field 'score' is 'five', not a number"),
    ("s1\ts2\tscore\na\t  \t1\n", STS_YAML, r"d.tsv:2: field 'text2' is empty; fill it or remove the row"),
    ("s1\ts2\tscore\n", STS_YAML, r"d.tsv: no data rows after the header; an empty split cannot be scored"),
    ("a\tb\t1\ttrain\n", "name: X\ntype: STS\ndata: {path: d.tsv, split_column: 3, columns: {text1: 0, text2: 1, "
     "score: 2}}\n", r"d.tsv: no rows for split 'test'; its split column holds: train"),
    ("a\tb\t2\n", "name: X\ntype: PairClassification\ndata: {path: d.tsv, columns: {text1: 0, text2: 1, label: 2}}\n",
     r"d.tsv:1: field 'label' is '2'; pair labels must be 0 or 1"),
    ("a\tb\t2\n", "name: X\ntype: STS\ndata: {path: d.tsv, header: false, columns: {text1: s1, text2: 1, score: 2}}\n",
     r"column 's1' for text1 is a name but the task says header: false"),
    ("a\tb\t2\n", "name: X\ntype: STS\ndata: {path: d.dat, columns: {text1: 0, text2: 1, score: 2}}\n",
     r"d.dat: cannot tell the format from the suffix '.dat'; set format: tsv\|csv\|text\|smart"),
    ("hello\n.I 1\n.W\nx\n", "name: X\ntype: Clustering\ndata: {path: d.tsv, format: smart, columns: {text: W, "
     "label: I}}\n", r"d.tsv:1: text before the first '.I id' line"),
])
def test_bad_data_names_file_line_and_field(tmp_path, data, yaml_text, match):
    (tmp_path / ("d.dat" if "d.dat" in yaml_text else "d.tsv")).write_text(data)
    with pytest.raises(ValueError, match=match):
        load_task(load_spec(write(tmp_path, yaml_text)))


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_csv_errors_name_the_first_line_of_a_record(tmp_path, encoding):
    """A bad record whose quoted field spans lines 3-4 is named by line 3, in either reader."""
    (tmp_path / "d.csv").write_bytes('s1,s2,score\na,b,1\n"caf\u00e9\nau lait",d\n'.encode(encoding))
    yaml_text = (f"name: X\ntype: STS\ndata: {{path: d.csv, encoding: {encoding}, columns: {{text1: s1, text2: s2, "
                 "score: score}}\n")
    with pytest.raises(ValueError, match=r"d.csv:3: field 'score' wants column 2 but the row has 2 column\(s\)"):
        load_task(load_spec(write(tmp_path, yaml_text)))


def test_retrieval_ids_must_match_and_be_unique(tmp_path):
    (tmp_path / "q.tsv").write_text("1\tcat\n2\tdog\n")
    (tmp_path / "c.tsv").write_text("a\tthe cat\nb\tthe dog\n")
    yaml_text = ("name: R\ntype: Retrieval\nqueries: {path: q.tsv, columns: {id: 0, text: 1}}\n"
                 "corpus: {path: c.tsv, columns: {id: 0, text: 1}}\nqrels: {path: r.tsv, columns: {query_id: 0, "
                 "doc_id: 1}}\n")
    (tmp_path / "r.tsv").write_text("1\ta\n2\tzz\n")
    with pytest.raises(ValueError, match=r"r.tsv:2: doc_id 'zz' is not in .*c.tsv"):
        load_task(load_spec(write(tmp_path, yaml_text)))
    (tmp_path / "r.tsv").write_text("1\ta\n")
    (tmp_path / "c.tsv").write_text("a\tthe cat\na\tthe dog\n")
    with pytest.raises(ValueError, match=r"c.tsv:2: id 'a' repeats line 1"):
        load_task(load_spec(write(tmp_path, yaml_text)))
    (tmp_path / "c.tsv").write_text("a\tthe cat\nb\tthe dog\n")
    assert load_task(load_spec(write(tmp_path, yaml_text))).data.dropped_queries == 1
    with pytest.raises(FileNotFoundError, match="no such task file"):
        load_spec(tmp_path / "missing.yaml")
