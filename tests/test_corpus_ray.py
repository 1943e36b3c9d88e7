"""The `ray` engine on a local Ray (2 CPUs, no dashboard, one session for the module): the same shards as the
`local` engine, byte for byte, and the same resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_corpus import SAMPLE, job, read_folder, sample_rows

from qzhou import Embedder
from qzhou.cli import main
from qzhou.corpus import encode_corpus

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="the ray engine needs `pip install 'qzhou[ray]'`")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(base_dirs):
    return base_dirs["qwen2"]


def test_ray_equals_local_and_single_process(model_dir, tmp_path, capsys):
    local = tmp_path / "local"
    encode_corpus(job(model_dir, local))
    out = tmp_path / "ray"
    assert main(["encode", str(model_dir), "--input", str(SAMPLE), "--id-field", "id", "--output", f"{out}/",
                 "--engine", "ray", "--shard-rows", "5", "--dtype", "float32", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_encoded"] == 32 and summary["shards_encoded"] == 7
    assert summary["workers"][0]["worker"].startswith("ray-") and summary["workers"][0]["rows_per_s"] > 0
    ids, emb = read_folder(out)
    ref_ids, ref = read_folder(local)
    assert ids == ref_ids == [r["id"] for r in sample_rows()]
    assert np.array_equal(emb, ref)
    single = Embedder.load(model_dir, dtype="float32", device="cpu").encode([r["text"] for r in sample_rows()])
    np.testing.assert_allclose(emb, single, atol=1e-5)
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["workers"][0]["engine"] == "ray"


def test_ray_resumes_and_mixes_with_local(model_dir, tmp_path):
    out = tmp_path / "mixed"
    encode_corpus(job(model_dir, out, shard="0/2"))  # the local engine does part 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    summary = encode_corpus(job(model_dir, out, engine="ray"))  # ray finishes the rest
    assert summary["shards_skipped"] == 4 and summary["rows_encoded"] == 32 - (5 + 5 + 5 + 2)  # part 0/2: shards 0, 2, 4, 6
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before
    local = tmp_path / "local"
    encode_corpus(job(model_dir, local))
    assert np.array_equal(read_folder(out)[1], read_folder(local)[1])
