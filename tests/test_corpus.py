"""`qzhou encode --output DIR/`: shards + manifest on the shipped sample corpus with a tiny model, checked against
one in-process `Embedder.encode` over the whole corpus; resume after kill -9; refusals; `--shard i/N`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qzhou import Embedder
from qzhou.cli import main
from qzhou.corpus import CorpusJob, EncodeSettings, encode_corpus
from qzhou.corpus.inputs import parse_shard_spec, plan_shards, scan_inputs, select
from qzhou.corpus.shards import read_shard

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "qzhou" / "resources" / "sample_corpus.jsonl"
SHARD_ROWS = 5  # 32 rows -> 7 shards, the last one short


def read_folder(folder: Path) -> tuple[list[str], np.ndarray]:
    """All ids and vectors of an embeddings folder, in manifest order."""
    man = json.loads((folder / "manifest.json").read_text())
    parts = [read_shard(folder / s["name"]) for s in man["shards"]]
    return [i for ids, _ in parts for i in ids], np.concatenate([e for _, e in parts])


def sample_rows() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


def job(model, out, **kw) -> CorpusJob:
    settings = kw.pop("settings", EncodeSettings(id_field="id"))
    return CorpusJob(model=model, input=SAMPLE, output=out, settings=settings, shard_rows=SHARD_ROWS, dtype="float32",
                     progress=False, **kw)


@pytest.fixture(scope="module")
def model_dir(base_dirs) -> Path:
    return base_dirs["qwen2"]


@pytest.fixture(scope="module")
def reference(model_dir) -> np.ndarray:
    """The single-process result: one `Embedder.encode` call over the whole corpus."""
    e = Embedder.load(model_dir, dtype="float32", device="cpu")
    return e.encode([r["text"] for r in sample_rows()])


@pytest.fixture(scope="module")
def local_folder(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "emb"
    summary = encode_corpus(job(model_dir, out))
    assert summary["rows_encoded"] == 32 and summary["shards_encoded"] == 7 and summary["complete"]
    return out


def test_plan_names_and_ranges_are_deterministic(tmp_path):
    files = scan_inputs(SAMPLE, progress=False)
    shards = plan_shards(files, SHARD_ROWS)
    assert [(s.start, s.end) for s in shards] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30), (30, 32)]
    assert shards[0].name == plan_shards(scan_inputs(SAMPLE, progress=False), SHARD_ROWS)[0].name
    assert shards[-1].name.endswith("-0000000030-0000000032.parquet")
    assert [s.start for s in select(shards, 1, 3)] == [5, 20]
    assert parse_shard_spec("2/4") == (2, 4)
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(ValueError, match="--shard takes I/N"):
            parse_shard_spec(bad)


def test_local_equals_single_process(local_folder, reference):
    ids, emb = read_folder(local_folder)
    assert ids == [r["id"] for r in sample_rows()]
    assert emb.dtype == np.float32 and emb.shape == reference.shape
    np.testing.assert_allclose(emb, reference, atol=1e-5)  # batches differ (per shard), so not bit-exact
    man = json.loads((local_folder / "manifest.json").read_text())
    assert man["dimension"] == 64 and man["rows_done"] == 32 and man["complete"]
    assert man["model"]["fingerprint"]["weights"] and man["model"]["dtype"] == "float32"
    assert man["prompt"]["template"] == "{text}"  # documents: no template
    assert [w["rows"] for run in man["workers"] for w in run["workers"]] == [32]
    assert man["workers"][0]["rows_per_s"] > 0


def test_chunks_inside_a_shard(model_dir, reference, tmp_path):
    """`chunk_rows` splits a shard into several `Embedder.encode` calls (the progress step): same vectors."""
    out = tmp_path / "chunks"
    encode_corpus(job(model_dir, out, settings=EncodeSettings(id_field="id", chunk_rows=2)))
    np.testing.assert_allclose(read_folder(out)[1], reference, atol=1e-5)


def test_two_local_workers_write_the_same_shards(model_dir, local_folder, tmp_path):
    out = tmp_path / "two"
    summary = encode_corpus(job(str(model_dir), out, devices="cpu,cpu"))
    assert sorted(w["worker"] for w in summary["workers"]) == ["local-0", "local-1"]
    assert sum(w["rows"] for w in summary["workers"]) == 32
    ids, emb = read_folder(out)
    ref_ids, ref = read_folder(local_folder)
    assert ids == ref_ids and np.array_equal(emb, ref)


def test_cli_float16_query_prompt_and_rerun_skips(model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["encode", str(model_dir), "--input", str(SAMPLE), "--id-field", "id", "--output", f"{out}/",
            "--prompt-name", "query", "--store-dtype", "float16", "--shard-rows", "8", "--dtype", "float32", "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["rows_encoded"] == 32 and first["shards"] == 4
    ids, emb = read_folder(out)
    e = Embedder.load(model_dir, dtype="float32", device="cpu")
    want = e.encode([r["text"] for r in sample_rows()], prompt_name="query")
    assert emb.dtype == np.float16
    np.testing.assert_allclose(emb.astype(np.float32), want, atol=2e-3)
    assert json.loads((out / "manifest.json").read_text())["prompt"]["template"] != "{text}"
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rows_encoded"] == 0 and again["shards_skipped"] == 4


def test_kill_9_then_rerun_recomputes_nothing_finished(model_dir, local_folder, tmp_path):
    """A subprocess is killed (SIGKILL) after three shards; the rerun encodes only the other four."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys, time
        import qzhou.corpus.worker as w
        write, done = w.write_shard, []
        def slow(*a, **k):
            path = write(*a, **k)
            done.append(path.name)
            print("WROTE", path.name, flush=True)
            if len(done) >= 3:
                time.sleep(120)  # the test kills this process here
            return path
        w.write_shard = slow
        from qzhou.cli import main
        sys.exit(main(["encode", {str(model_dir)!r}, "--input", {str(SAMPLE)!r}, "--id-field", "id",
                       "--output", {str(out) + "/"!r}, "--shard-rows", "5", "--dtype", "float32", "--quiet"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        written = [proc.stdout.readline().split()[-1] for _ in range(3)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(p.name for p in out.glob("*.parquet"))
    assert finished == sorted(written)
    mtimes = {n: (out / n).stat().st_mtime_ns for n in finished}
    man = json.loads((out / "manifest.json").read_text())
    assert not man["complete"]

    summary = encode_corpus(job(model_dir, out))
    assert summary["shards_skipped"] == 3 and summary["shards_encoded"] == 4
    assert summary["rows_encoded"] == 32 - 15  # the counter: only the unfinished rows were encoded
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == mtimes
    ids, emb = read_folder(out)
    ref_ids, ref = read_folder(local_folder)
    assert ids == ref_ids and np.array_equal(emb, ref)
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_another_model_is_refused_and_no_resume_restarts(base_dirs, model_dir, local_folder, tmp_path):
    out = tmp_path / "mixed"
    encode_corpus(job(model_dir, out))
    with pytest.raises(ValueError, match=r"different run: model\.fingerprint .*--no-resume"):
        encode_corpus(job(base_dirs["llama"], out))
    # same architecture and config, one weight changed: only the weights hash tells them apart
    e = Embedder.load(model_dir, dtype="float32", device="cpu")
    with __import__("torch").no_grad():
        e.backbone.norm.weight[0] += 0.5
    with pytest.raises(ValueError, match="model.fingerprint"):
        encode_corpus(job(e, out))
    summary = encode_corpus(job(base_dirs["llama"], out, resume=False))
    assert summary["rows_encoded"] == 32
    assert not np.array_equal(read_folder(out)[1], read_folder(local_folder)[1])


def test_changed_settings_and_inputs_are_refused(model_dir, tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "a.jsonl").write_text(SAMPLE.read_text())
    out = tmp_path / "emb"
    base = dict(model=model_dir, input=data, output=out, shard_rows=10, dtype="float32", progress=False)
    encode_corpus(CorpusJob(**base, settings=EncodeSettings(id_field="id")))
    with pytest.raises(ValueError, match="store_dtype"):
        encode_corpus(CorpusJob(**base, settings=EncodeSettings(id_field="id", store_dtype="float16")))
    with pytest.raises(ValueError, match=r"input\.shard_rows"):
        encode_corpus(CorpusJob(**{**base, "shard_rows": 7}, settings=EncodeSettings(id_field="id")))
    (data / "b.jsonl").write_text('{"id": "x", "text": "one more"}\n')
    with pytest.raises(ValueError, match=r"input files changed \(b\.jsonl"):
        encode_corpus(CorpusJob(**base, settings=EncodeSettings(id_field="id")))


def test_shard_parts_fill_one_folder(model_dir, local_folder, tmp_path):
    out = tmp_path / "parts"
    first = encode_corpus(job(model_dir, out, shard="0/2"))
    assert first["shards_encoded"] == 4 and not first["complete"]
    second = encode_corpus(job(model_dir, out, shard="1/2"))
    assert second["shards_encoded"] == 3 and second["complete"]
    ids, emb = read_folder(out)
    ref_ids, ref = read_folder(local_folder)
    assert ids == ref_ids and np.array_equal(emb, ref)
    man = json.loads((out / "manifest.json").read_text())
    assert sorted(run["shard"] for run in man["workers"]) == ["0/2", "1/2"]


def test_bad_rows_name_file_line_and_field(tmp_path):
    """Rows are checked while they are counted: the error comes before the model loads (there is none here)."""
    model_dir = tmp_path / "no-model-needed"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'text' .*--field"):
        encode_corpus(CorpusJob(model=model_dir, input=bad, output=tmp_path / "o", progress=False,
                                settings=EncodeSettings(id_field="id")))
    bad.write_text('{"id": "a", "text": "fine"}\n{"text": "no id"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'id' .*--id-field"):
        encode_corpus(CorpusJob(model=model_dir, input=bad, output=tmp_path / "o2", progress=False,
                                settings=EncodeSettings(id_field="id")))
    with pytest.raises(ValueError, match="--devices takes"):
        encode_corpus(CorpusJob(model=model_dir, input=SAMPLE, output=tmp_path / "o3", devices="gpu0",
                                progress=False))
