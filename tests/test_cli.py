"""The CLI end to end on a tiny model: convert, encode (every input and output type), info; bad input gives
errors that name file, line and field."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qzhou import Embedder
from qzhou.cli import main
from qzhou.textio import InputError, read_texts

TEXTS = ["the cat", "a dog runs", "paris is a city"]


@pytest.fixture(scope="module")
def model_dir(base_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "emb"
    assert main(["convert", str(base_dirs["llama"]), str(out), "--attention", "bidirectional", "--pooling", "mean",
                 "--dtype", "float32"]) == 0
    return out


def write_inputs(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS)))
    (tmp_path / "t.csv").write_text("id,text\n" + "\n".join(f'{i},"{t}"' for i, t in enumerate(TEXTS)))
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "t.parquet")


def test_convert_writes_an_embedder(model_dir):
    e = Embedder.load(model_dir, dtype="float32")
    assert (e.config.attention, e.config.pooling) == ("bidirectional", "mean")
    assert json.loads((model_dir / "config.json").read_text())["is_causal"] is False


@pytest.mark.parametrize("name,field", [("t.txt", None), ("t.jsonl", "body"), ("t.csv", None), ("t.parquet", None)])
def test_encode_every_input_type(model_dir, tmp_path, name, field):
    write_inputs(tmp_path)
    args = ["encode", str(model_dir), "--input", str(tmp_path / name), "--output", str(tmp_path / "e.npy"),
            "--dtype", "float32", "--quiet"]
    assert main(args + (["--field", field] if field else [])) == 0
    expected = Embedder.load(model_dir, dtype="float32").encode(TEXTS)
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), expected, atol=1e-6)


def test_encode_options_and_parquet_output(model_dir, tmp_path):
    write_inputs(tmp_path)
    out = tmp_path / "e.parquet"
    assert main(["encode", str(model_dir), "--input", str(tmp_path / "t.txt"), "--output", str(out),
                 "--instruction", "Find animals", "--dim", "16", "--dtype", "float32", "--quiet"]) == 0
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == TEXTS
    got = np.array(table.column("embedding").to_pylist())
    expected = Embedder.load(model_dir, dtype="float32").encode(TEXTS, instruction="Find animals", dim=16)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_info(model_dir, capsys):
    assert main(["info", str(model_dir), "--json", "--dtype", "float32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "LlamaModel" and info["dimension"] == 64
    assert info["attention"] == "bidirectional" and info["pooling"] == "mean"
    assert info["prompts"]["query"].startswith("Instruct: ")


def test_bad_inputs_name_file_line_and_field(tmp_path, model_dir, capsys):
    f = tmp_path / "x.txt"
    f.write_bytes(b"ok\n\xff\xfebad\n")
    with pytest.raises(InputError, match=r"x.txt:2: not valid UTF-8 \(byte 0xff at column 1\)"):
        read_texts(f)
    f.write_text("ok\n\nthird\n")
    with pytest.raises(InputError, match=r"x.txt:2: text is empty"):
        read_texts(f)
    j = tmp_path / "x.jsonl"
    j.write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: no field 'text' \(found \['txt'\]\)"):
        read_texts(j)
    j.write_text('{"text": "a"}\n{"text": 3}\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: field 'text' is int"):
        read_texts(j)
    j.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InputError, match=r"x.jsonl:2: invalid JSON"):
        read_texts(j)
    c = tmp_path / "x.csv"
    c.write_text("text\nfine\n\"\"\n")
    with pytest.raises(InputError, match=r"x.csv:3: field 'text' is empty"):
        read_texts(c)
    assert main(["encode", str(model_dir), "--input", str(tmp_path / "missing.txt"), "--output", "o.npy"]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err


def test_missing_model_and_unknown_architecture(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    d = tmp_path / "mamba"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "mamba"}')
    assert main(["info", str(d)]) == 2
    assert "unsupported architecture model_type='mamba'" in capsys.readouterr().err
