"""Shared by the tests/test_eval_*.py files: a deterministic bag-of-words embedder and one tiny local task of
each type (every file format the readers support), written into a temporary folder."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

ANIMALS = "cat dog fox bird fish".split()
PLACES = "paris france city river house".split()


class BagOfWords:
    """Hashes words (and the instruction's words) into `dim` buckets, plus a little per-text noise: similar texts
    get similar vectors, every text gets the same vector whatever batch it is in, and calls are logged."""

    def __init__(self, dim: int = 32, noise: float = 0.3):
        self.dim, self.noise = dim, noise
        self.calls: list[tuple[str | None, list[str]]] = []

    def encode(self, texts, instruction=None, **_):
        self.calls.append((instruction, list(texts)))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = (t + " " + (instruction or "")).lower().split()
            for w in words:
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
            out[i] += self.noise * np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def info(self):
        return {"architecture": "BagOfWords", "dimension": self.dim, "dtype": "float32"}


def sentence(rng: np.random.Generator, topic: list[str], n: int = 4) -> str:
    return " ".join(rng.choice(topic, size=n)) + " " + " ".join(rng.choice(["the", "a", "of", "in"], size=2))


def write_tasks(root: Path) -> dict[str, Path]:
    """One YAML task per type over tiny files in `root`; returns type -> YAML path."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    y: dict[str, Path] = {}

    # STS: tab-separated, no header, extra trailing columns on some rows (as STS-B has)
    lines = []
    for i in range(30):  # gold 5: the same sentence; about 3: same topic; below 1: the other topic
        topic, other = (ANIMALS, PLACES) if i % 2 else (PLACES, ANIMALS)
        a = sentence(rng, topic)
        b, gold = [(a, 5.0), (sentence(rng, topic), rng.uniform(2.5, 3.5)), (sentence(rng, other), rng.uniform(0, 1))][i % 3]
        lines.append(f"g\tf\t2012\t{i}\t{gold:.2f}\t{a}\t{b}" + ("\textra\tmore" if i % 5 == 0 else ""))
    (root / "sts.tsv").write_text("\n".join(lines) + "\n")
    y["STS"] = _yaml(root / "sts.yaml", """
name: TinySTS
type: STS
instruction: Retrieve semantically similar text
data: {path: sts.tsv, format: tsv, columns: {text1: 5, text2: 6, score: 4}}
""")

    # pair classification: '||'-separated text, no header
    rows = []
    for i in range(40):
        a = sentence(rng, ANIMALS if i % 2 else PLACES)
        same = i % 3 != 0
        b = a if same and i % 2 else sentence(rng, ANIMALS if (i % 2) == same else PLACES)
        rows.append(f"{i}||{a}||{b}||{int(same)}")
    (root / "pairs.txt").write_text("\n".join(rows) + "\n")
    y["PairClassification"] = _yaml(root / "pairs.yaml", """
name: TinyPairs
type: PairClassification
instruction: Retrieve paraphrases
data: {path: pairs.txt, format: text, delimiter: "||", columns: {text1: 1, text2: 2, label: 3}}
""")

    # classification: one CSV with a header and a split column for both splits
    rows = ["text,label,split"]
    for i in range(60):
        label = ["animal", "place", "mixed"][i % 3]
        topic = {"animal": ANIMALS, "place": PLACES, "mixed": ANIMALS + PLACES}[label]
        rows.append(f'"{sentence(rng, topic)}",{label},{"train" if i < 42 else "test"}')
    (root / "cls.csv").write_text("\n".join(rows) + "\n")
    y["Classification"] = _yaml(root / "cls.yaml", """
name: TinyClassification
type: Classification
instruction: Classify the topic of the sentence
protocol: {n_experiments: 3, samples_per_label: 4}
train: {path: cls.csv, columns: {text: text, label: label}, split_column: split}
data: {path: cls.csv, columns: {text: text, label: label}, split_column: split}
""")

    # clustering: CSV without header, text over two columns
    rows = [f'{i % 2},"{sentence(rng, ANIMALS if i % 2 else PLACES, 2)}","{sentence(rng, ANIMALS if i % 2 else PLACES, 2)}"'
            for i in range(40)]
    (root / "clu.csv").write_text("\n".join(rows) + "\n")
    y["Clustering"] = _yaml(root / "clu.yaml", """
name: TinyClustering
type: Clustering
instruction: Identify the topic
protocol: {max_fraction: null, cluster_size: 64, n_experiments: 3, batch_size: 16}
data: {path: clu.csv, format: csv, columns: {text: [1, 2], label: 0}}
""")

    # retrieval: SMART queries and corpus, whitespace qrels
    docs = [sentence(rng, ANIMALS if i % 2 else PLACES, 6) for i in range(24)]
    (root / "docs.all").write_text("".join(f".I {i + 1}\n.T\nTitle {i + 1}\n.W\n{' '.join(d.split()[:3])}\n"
                                           f"{' '.join(d.split()[3:])}\n.X\n1 2 3\n" for i, d in enumerate(docs)))
    queries = [docs[i].split()[0] + " " + docs[i].split()[1] for i in range(0, 24, 3)]
    (root / "queries.qry").write_text("".join(f".I {j + 1}\n.W\n{q}\n" for j, q in enumerate(queries)))
    qrels = [f"  {j + 1}   {i + 1}\t0\t0.000000" for j, i in enumerate(range(0, 24, 3))]
    qrels += [f"  {j + 1}   {i + 2}\t0\t0.000000" for j, i in enumerate(range(0, 24, 6))]
    (root / "qrels.txt").write_text("\n".join(qrels) + "\n")
    y["Retrieval"] = _yaml(root / "ret.yaml", """
name: TinyRetrieval
type: Retrieval
instruction: Given a query, retrieve documents
queries: {path: queries.qry, format: smart, columns: {id: I, text: W}}
corpus: {path: docs.all, format: smart, columns: {id: I, text: [T, W]}}
qrels: {path: qrels.txt, format: text, columns: {query_id: 0, doc_id: 1}}
""")

    # reranking: one CSV row per candidate (TREC-QA layout); the last question has no correct candidate
    rows = ["qtext,label,atext"]
    for q in range(7):
        question = sentence(rng, ANIMALS if q % 2 else PLACES, 3)
        for c in range(5):
            good = c in (q % 5, (q + 2) % 5) and q < 6
            rows.append(f'"{question}",{int(good)},"{sentence(rng, ANIMALS if (q % 2) == good else PLACES, 5)}"')
    (root / "rerank.csv").write_text("\n".join(rows) + "\n")
    y["Reranking"] = _yaml(root / "rerank.yaml", """
name: TinyReranking
type: Reranking
instruction: Given a question, retrieve answers
data: {path: rerank.csv, format: csv, columns: {query: qtext, document: atext, label: label}}
""")
    return y


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text.lstrip())
    return path
