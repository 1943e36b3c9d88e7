"""Local evaluation tasks: a small YAML file names the type, the files, the columns, the split and the instruction,
so a user's own data needs no code (docs: `TaskSpec`). The built-in suite over `../shared/data` is shipped the same
way, as YAML files in `qzhou/evaluation/suite/`.

Paths in a user's YAML are relative to that YAML file; paths in the built-in suite are relative to the data root
(`--data-root`, else `$QZHOU_DATA`, else `../shared/data` beside the repository). Every bad row is an error that
names the file, the line and the field: a benchmark that silently drops rows reports a number nobody can reproduce.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from qzhou.evaluation.readers import Source, read_rows

TaskType = Literal["STS", "PairClassification", "Classification", "Clustering", "Retrieval", "Reranking"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)
#: per type: the sources it reads and, per source, the (required, optional) roles its `columns` map
SOURCES: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "STS": {"data": (("text1", "text2", "score"), ())},
    "PairClassification": {"data": (("text1", "text2", "label"), ())},
    "Classification": {"data": (("text", "label"), ()), "train": (("text", "label"), ())},
    "Clustering": {"data": (("text", "label"), ())},
    "Retrieval": {"queries": (("id", "text"), ()), "corpus": (("id", "text"), ()),
                  "qrels": (("query_id", "doc_id"), ("relevance",))},
    "Reranking": {"data": (("query", "document", "label"), ("query_id",))},
}
ALL_SOURCES = ("data", "train", "queries", "corpus", "qrels")


class ClassificationProtocol(BaseModel):
    """mteb `AbsTaskClassification`: `n_experiments` logistic regressions (`max_iter`), each trained on
    `samples_per_label` training texts per label, drawn with numpy RandomState(`seed`)."""

    model_config = ConfigDict(extra="forbid")
    n_experiments: int = 10
    samples_per_label: int = 8
    max_iter: int = 100
    seed: int = 42


class ClusteringProtocol(BaseModel):
    """mteb v2 `AbsTaskClustering` (the MTEB(eng, v2) protocol, not the legacy one): embed a random
    `max_fraction` (or `max_documents`) of the texts, then `n_experiments` times draw `cluster_size` of them with
    replacement and run MiniBatchKMeans(k = number of labels, `batch_size`); the score is the mean V-measure.
    Set both `max_fraction` and `max_documents` to null to embed every text."""

    model_config = ConfigDict(extra="forbid")
    max_fraction: float | None = 0.04
    max_documents: int | None = None
    cluster_size: int = 16384
    n_experiments: int = 10
    batch_size: int = 512
    seed: int = 42

    @model_validator(mode="before")
    @classmethod
    def _documents_replace_fraction(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_documents") is not None and "max_fraction" not in data:
            data = {**data, "max_fraction": None}  # a number of documents replaces the default fraction
        return data

    @model_validator(mode="after")
    def _one_limit(self) -> ClusteringProtocol:
        if self.max_fraction is not None and self.max_documents is not None:
            raise ValueError("give max_fraction or max_documents, not both (set the other to null)")
        return self


PROTOCOLS: dict[str, type[BaseModel]] = {"Classification": ClassificationProtocol, "Clustering": ClusteringProtocol}


class TaskSpec(BaseModel):
    """One task file. Example (STS; `columns` map roles to 0-based column numbers or header names):

        name: STSBenchmark
        type: STS                      # STS | PairClassification | Classification | Clustering | Retrieval | Reranking
        split: test
        instructions_from: STSBenchmark   # a task of the instruction registry, or `instruction: "..."`
        data: {path: stsb/sts-test.csv, format: tsv, columns: {text1: 5, text2: 6, score: 4}}

    Sources by type: STS `data{text1,text2,score}`; PairClassification `data{text1,text2,label(0/1)}`;
    Classification `train{text,label}` + `data{text,label}`; Clustering `data{text,label}`; Retrieval
    `queries{id,text}` + `corpus{id,text}` + `qrels{query_id,doc_id[,relevance]}`; Reranking
    `data{query,document,label[,query_id]}` (one row per candidate). A `text` role may list several columns
    (joined with a space). A source with `split_column` keeps only the rows of `split` (`train_split` for train).
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    type: TaskType
    description: str = ""
    language: str | None = None
    split: str = "test"
    train_split: str = "train"
    instructions_from: str | None = None
    instruction: str | None = None
    symmetric: bool | None = None
    data: Source | None = None
    train: Source | None = None
    queries: Source | None = None
    corpus: Source | None = None
    qrels: Source | None = None
    protocol: dict[str, Any] = {}
    _base: Path = PrivateAttr(default=Path("."))
    _origin: str = PrivateAttr(default="<memory>")

    @model_validator(mode="after")
    def _check_shape(self) -> TaskSpec:
        wanted = SOURCES[self.type]
        for name in ALL_SOURCES:
            src = getattr(self, name)
            if name in wanted and src is None:
                raise ValueError(f"type {self.type} needs a '{name}' source with columns {_roles(wanted[name])}")
            if name not in wanted and src is not None:
                raise ValueError(f"type {self.type} takes no '{name}' source; it reads: {', '.join(wanted)}")
            if src is not None:
                required, optional = wanted[name]
                missing = [r for r in required if r not in src.columns]
                unknown = [r for r in src.columns if r not in required + optional]
                if missing or unknown:
                    what = f"missing column role(s) {missing}" if missing else f"unknown column role(s) {unknown}"
                    raise ValueError(f"{name}.columns: {what}; {self.type} {name} takes {_roles(wanted[name])}")
        if self.instructions_from and self.instruction:
            raise ValueError("give instructions_from (a registry task) or instruction (your own text), not both")
        if self.instructions_from:
            from qzhou.instructions import task_entry

            task_entry(self.instructions_from)  # KeyError naming the task when it is not in the registry
        self.protocol_options()
        return self

    def protocol_options(self) -> BaseModel | None:
        """The evaluation protocol (mteb's defaults, overridden by the file's `protocol:`)."""
        model = PROTOCOLS.get(self.type)
        if model is None:
            if self.protocol:
                raise ValueError(f"type {self.type} takes no protocol options (got {sorted(self.protocol)})")
            return None
        try:
            return model(**self.protocol)
        except ValidationError as e:
            fields = ", ".join(model.model_fields)
            raise ValueError("; ".join(f"protocol.{_problem(err)}" for err in e.errors()) +
                             f" ({self.type} protocol options: {fields})") from None

    def instruction_for(self, side: Literal["query", "document"], rules: str) -> str | None:
        """The instruction on this task's `side` under `rules` ("qzhou", "qwen3", or "none" for models trained
        without instructions). `instructions_from` uses the registry's entry; otherwise the file's `instruction`
        goes through the same rules (symmetric by default for every type but Retrieval, as QZhou does)."""
        if rules == "none":
            return None
        from qzhou.instructions import instruction_for

        if self.instructions_from:
            return instruction_for(self.instructions_from, side, rules)
        symmetric = self.type != "Retrieval" if self.symmetric is None else self.symmetric
        entry = {"type": self.type, "qzhou": self.instruction or "", "qzhou_symmetric": symmetric,
                 "qwen3": self.instruction or ""}
        return instruction_for(self.name, side, rules, extra={self.name: entry}) or None

    @property
    def origin(self) -> str:
        return self._origin

    def path(self, src: Source) -> Path:
        p = Path(src.path).expanduser()
        return p if p.is_absolute() else self._base / p


def _roles(spec: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    required, optional = spec
    return "{" + ", ".join(required + tuple(f"{o} (optional)" for o in optional)) + "}"


# ------------------------------------------------------------------------------------------------ finding tasks
def default_data_root() -> Path:
    """`$QZHOU_DATA`, else `../shared/data` beside the repository (a source checkout), else beside the cwd."""
    if os.environ.get("QZHOU_DATA"):
        return Path(os.environ["QZHOU_DATA"]).expanduser()
    beside_repo = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else Path.cwd().parent / "shared" / "data"


def builtin_tasks() -> dict[str, Path]:
    """Built-in suite: task name -> YAML file, in suite order (by type, English first, then by name)."""
    folder = resources.files(__package__).joinpath("suite")
    specs = [(load_spec(Path(str(f))), Path(str(f))) for f in folder.iterdir() if f.name.endswith(".yaml")]
    specs.sort(key=lambda sp: (TASK_TYPES.index(sp[0].type), sp[0].language != "eng", sp[0].name))  # English first
    return {s.name: p for s, p in specs}


def load_spec(path: str | Path, base: Path | None = None) -> TaskSpec:
    """Read one task file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such task file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a task file is a mapping (name, type, split, sources...); see qzhou.evaluation.tasks")
    try:
        spec = TaskSpec(**raw)
    except ValidationError as e:
        problems = "; ".join(_problem(err) for err in e.errors())
        raise ValueError(f"{path}: {problems}") from None
    except KeyError as e:
        raise ValueError(f"{path}: instructions_from: {e.args[0]}") from None
    spec._base = base if base is not None else path.parent
    spec._origin = str(path)
    return spec


def _problem(err: Any) -> str:
    where = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def resolve_tasks(names: list[str], data_root: str | Path | None = None) -> list[TaskSpec]:
    """`--tasks` values -> specs: `suite` (every built-in task), a built-in task name, a YAML file or a folder
    of YAML files. Built-in tasks read their files under `data_root`."""
    root = Path(data_root).expanduser() if data_root else default_data_root()
    builtins = builtin_tasks()
    by_lower = {p.stem.lower(): p for p in builtins.values()} | {n.lower(): p for n, p in builtins.items()}
    specs: list[TaskSpec] = []
    for name in names:
        p = Path(name).expanduser()
        if name.lower() in ("suite", "all"):
            specs += [load_spec(f, base=root) for f in builtins.values()]
        elif p.is_dir():
            files = sorted(list(p.glob("*.yaml")) + list(p.glob("*.yml")))
            if not files:
                raise FileNotFoundError(f"{p}: folder holds no .yaml task files")
            specs += [load_spec(f) for f in files]
        elif p.is_file():
            specs.append(load_spec(p))
        elif name.lower() in by_lower:
            specs.append(load_spec(by_lower[name.lower()], base=root))
        else:
            raise FileNotFoundError(f"task {name!r}: no such file and no built-in task of that name; "
                                    f"built-in: suite, {', '.join(builtins)}")
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ValueError(f"task {s.name!r} is given twice ({s.origin}); task names must be unique in a run")
        seen.add(s.name)
    return specs


# ------------------------------------------------------------------------------------------------ loaded data
@dataclass
class Pairs:
    """STS / PairClassification: text pairs and their gold score (STS) or 0/1 label (pairs)."""

    text1: list[str]
    text2: list[str]
    values: np.ndarray


@dataclass
class Labeled:
    """Classification / Clustering: texts and their labels."""

    texts: list[str]
    labels: list[str]


@dataclass
class Corpus:
    """Retrieval / Reranking: queries and documents by id, relevant documents per query (relevance > 0), and for
    reranking the candidate documents of each query."""

    queries: dict[str, str]
    docs: dict[str, str]
    qrels: dict[str, dict[str, int]]
    candidates: dict[str, list[str]] | None = None
    dropped_queries: int = 0


@dataclass
class LoadedTask:
    spec: TaskSpec
    data: Pairs | Labeled | Corpus
    train: Labeled | None = None
    files: dict[str, str] = field(default_factory=dict)  # file -> sha256, recorded in the results

    @property
    def size(self) -> int:
        d = self.data
        return len(d.text1) if isinstance(d, Pairs) else len(d.texts) if isinstance(d, Labeled) else len(d.qrels)


def load_task(spec: TaskSpec) -> LoadedTask:
    """Read a task's files into memory (files are small; MTEB tasks are at most a few hundred MB)."""
    files: dict[str, str] = {}

    def rows(name: str, split: str | None):
        src = getattr(spec, name)
        path = spec.path(src)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file, named by '{name}' in {spec.origin} (built-in tasks read "
                                    "under the data root: set --data-root or $QZHOU_DATA; your own task files "
                                    "read relative to the file)")
        files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        return path, read_rows(src, path, split)

    if spec.type in ("STS", "PairClassification"):
        path, data = rows("data", spec.split)
        vals = [_number(r, "score", path) for r in data] if spec.type == "STS" else [_binary(r, path) for r in data]
        loaded = Pairs([r["text1"] for r in data], [r["text2"] for r in data], np.asarray(vals, dtype=np.float64))
        return LoadedTask(spec, loaded, files=files)
    if spec.type in ("Classification", "Clustering"):
        path, data = rows("data", spec.split)
        train = None
        if spec.type == "Classification":
            _, trows = rows("train", spec.train_split)
            train = Labeled([r["text"] for r in trows], [r["label"] for r in trows])
        return LoadedTask(spec, Labeled([r["text"] for r in data], [r["label"] for r in data]), train, files)
    if spec.type == "Retrieval":
        qpath, qrows = rows("queries", None)
        cpath, crows = rows("corpus", None)
        rpath, rrows = rows("qrels", None)
        queries, docs = _by_id(qrows, qpath), _by_id(crows, cpath)
        qrels: dict[str, dict[str, int]] = {}
        for r in rrows:
            where = f"{rpath}:{r.line}"
            if r["query_id"] not in queries:
                raise ValueError(f"{where}: query_id {r['query_id']!r} is not in {qpath}; fix the id or drop the row")
            if r["doc_id"] not in docs:
                raise ValueError(f"{where}: doc_id {r['doc_id']!r} is not in {cpath}; fix the id or drop the row")
            rel = int(_number(r, "relevance", rpath)) if "relevance" in r else 1
            if rel > 0:
                qrels.setdefault(r["query_id"], {})[r["doc_id"]] = rel
        if not qrels:
            raise ValueError(f"{rpath}: no relevant (query, document) pair; a retrieval task needs at least one")
        return LoadedTask(spec, Corpus(queries, docs, qrels, None, len(queries) - len(qrels)), files=files)
    return _reranking(spec, *rows("data", spec.split), files)


def _reranking(spec: TaskSpec, path: Path, data: list, files: dict[str, str]) -> LoadedTask:
    """One row per (query, candidate, label): queries are grouped by `query_id` or by their text."""
    queries: dict[str, str] = {}
    ids: dict[str, str] = {}
    docs: dict[str, str] = {}
    candidates: dict[str, list[str]] = {}
    qrels: dict[str, dict[str, int]] = {}
    for r in data:
        key = r.get("query_id", r["query"])
        qid = ids.setdefault(key, f"q{len(ids)}")
        if queries.setdefault(qid, r["query"]) != r["query"]:
            raise ValueError(f"{path}:{r.line}: query_id {key!r} has another query text than before")
        did = f"{qid}-d{len(candidates.setdefault(qid, []))}"
        docs[did] = r["document"]
        candidates[qid].append(did)
        if _number(r, "label", path) > 0:
            qrels.setdefault(qid, {})[did] = 1
    if not qrels:
        raise ValueError(f"{path}: no row has a positive label; reranking needs relevant candidates")
    return LoadedTask(spec, Corpus(queries, docs, qrels, candidates, len(queries) - len(qrels)), files=files)


def _by_id(rows: list, path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for r in rows:
        if r["id"] in out:
            raise ValueError(f"{path}:{r.line}: id {r['id']!r} repeats line {first[r['id']]}; ids must be unique")
        out[r["id"]], first[r["id"]] = r["text"], r.line
    return out


def _number(row, role: str, path: Path) -> float:
    try:
        value = float(row[role])
    except ValueError:
        raise ValueError(f"{path}:{row.line}: field '{role}' is {row[role]!r}, not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"{path}:{row.line}: field '{role}' is {row[role]!r}, not a finite number")
    return value


def _binary(row, path: Path) -> int:
    value = _number(row, "label", path)
    if value not in (0.0, 1.0):
        raise ValueError(f"{path}:{row.line}: field 'label' is {row['label']!r}; pair labels must be 0 or 1")
    return int(value)
