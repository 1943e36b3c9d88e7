"""The first hour on the command line (issue 16): encode's inputs and outputs, `--set` and `--dim` errors before
anything loads or is written, `default` as a model name, help texts, `eval --list-tasks` and `eval compare`."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from bad_input_support import cli, run_main

from qzhou.cli import build_parser, parse

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "quickstart-cpu.yaml"
LONG = "the quick brown fox jumps over the lazy dog"  # 9 tokens for the tiny word-level tokenizer


@pytest.fixture(scope="module")
def tiny_model(base_dirs, tmp_path_factory) -> Path:
    from qzhou import Embedder

    out = tmp_path_factory.mktemp("bad_input_cli") / "emb"
    return Embedder.load(base_dirs["llama"], attention="bidirectional", pooling="mean", max_length=6,
                         dtype="float32").save(out)


def test_encode_folder_keeps_ids_and_counts_truncated_texts(tiny_model, tmp_path):
    from qzhou import Embedder

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.csv").write_text('id,text\ny1,"the cat"\n')
    (folder / "a.jsonl").write_text(f'{{"id": "x1", "text": "{LONG}"}}\n\n{{"id": "x2", "text": "a dog"}}\n')
    (folder / "notes.md").write_text("not an input type: ignored")
    out = tmp_path / "e.parquet"
    r = cli("encode", str(tiny_model), "--input", str(folder), "--output", str(out), "--dtype", "float32")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "warning: 1 of 3 texts were longer than the model's 6 tokens and were truncated" in r.stderr
    table = pq.read_table(out).to_pydict()
    assert table["id"] == ["x1", "x2", "y1"] and table["text"] == [LONG, "a dog", "the cat"]  # sorted file order
    expected = Embedder.load(tiny_model, dtype="float32").encode([LONG, "a dog", "the cat"])
    np.testing.assert_allclose(np.array(table["embedding"]), expected, atol=1e-5)


def test_encode_id_field_errors_name_the_line(tmp_path):
    from qzhou.textio import InputError, read_inputs

    (tmp_path / "t.jsonl").write_text('{"key": "a", "text": "the cat"}\n{"text": "a dog"}\n')
    with pytest.raises(InputError, match=r"t.jsonl:2: no id field 'key' \(found \['text'\]\)"):
        read_inputs(tmp_path / "t.jsonl", id_field="key")
    assert read_inputs(tmp_path / "t.jsonl").ids is None  # no `id` on the first row: no ids, no error
    (tmp_path / "t.txt").write_text("the cat\n")
    with pytest.raises(InputError, match="--id-field does not apply to .txt files"):
        read_inputs(tmp_path / "t.txt", id_field="key")


def test_encode_checks_input_and_dim_before_loading_the_model(tiny_model, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    r = cli("encode", str(tmp_path / "no-model"), "--input", str(tmp_path / "empty.jsonl"), "--output", "o.npy")
    assert r.returncode == 2 and r.stderr.strip() == f"qzhou encode: error: {tmp_path}/empty.jsonl: no texts to " \
                                                     "embed (an empty file?)"
    weightless = shutil.copytree(tiny_model, tmp_path / "weightless")
    (weightless / "model.safetensors").unlink()  # loading this model would fail: --dim must be refused first
    (tmp_path / "t.txt").write_text("the cat\n")
    r = cli("encode", str(weightless), "--input", str(tmp_path / "t.txt"), "--output", str(tmp_path / "o.npy"),
            "--dim", "1000")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "qzhou encode: error: --dim 1000: must be between 1 and the model's hidden size 64"
    assert not (tmp_path / "o.npy").exists()


def test_train_set_errors_are_one_line_before_any_output(tmp_path, capsys):
    out = tmp_path / "run"
    r = cli("train", str(RECIPE), "--output-dir", str(out), "--set", "stages.5.steps=3")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("qzhou train: error: --set stages.5.steps: index 5 is out of range; stages has "
                                "2 item(s), indexed 0..1")
    cases = {"stages.0=3": "stages.0 is a mapping, not a single value; set one of its entries",
             "stages.0.steps.x=1": "stages.0.steps is a single value (10), not a mapping or list",
             "stages.0.steps=-5": "stages.0.steps = -5: must be >= 1",
             "batch_size.retrieval=-1": "batch_size.retrieval = -1: must be >= 1",
             "tau=abc": "tau: Input should be a valid number, unable to parse string as a number (got 'abc')"}
    for item, message in cases.items():
        code, _, err = run_main(capsys, "train", str(RECIPE), "--output-dir", str(out), "--set", item)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (item, err)
    assert not out.exists()


def test_default_names_the_bundled_model(tmp_path, monkeypatch):
    from qzhou.modeling.loading import resolve_source

    cached = tmp_path / "smollm2-135m-instruct"
    cached.mkdir()
    (cached / "config.json").write_text("{}")
    monkeypatch.setenv("QZHOU_CACHE", str(tmp_path))
    assert resolve_source("default") == (cached, None)
    with pytest.raises(FileNotFoundError, match="'default' names the bundled SmolLM2-135M"):
        resolve_source(tmp_path / "nothing-here")


def test_gguf_dtype_advice_is_not_shown(tmp_path):
    from transformers.utils import logging as hf_logging

    from qzhou.modeling.loading import resolve_source

    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_source(tmp_path / "m.gguf") == (tmp_path, "m.gguf")
    logger = hf_logging.get_logger("transformers.quantizers.quantizer_gguf")

    def shown(message: str) -> bool:  # the logger's filters pass the record (levels aside)
        return bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 0, message, (), None)))

    assert not shown("Loading a GGUF checkpoint ... Pass `dtype=torch.float32` to avoid it")
    assert shown("Dequantizing the whole model, because ...")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def test_every_option_has_help_and_its_default():
    from qzhou.evaluation.cli import compare_parser

    commands = _subparsers(build_parser())
    parsers = {name: commands[name] for name in ("convert", "encode", "info", "quickstart", "train", "eval")}
    parsers |= {f"data {n}": p for n, p in _subparsers(commands["data"]).items() if n != "sample"}
    parsers["eval compare"] = compare_parser()
    for name, p in parsers.items():
        for action in p._actions:
            if not isinstance(action, argparse._HelpAction) and action.dest != "command":
                assert action.help, f"qzhou {name}: {action.dest} has no help text"
    text = " ".join(commands["encode"].format_help().split())  # argparse wraps to the terminal's width
    assert "(default: 16384)" in text and "(default: auto)" in text
    assert "(default: skip)" in " ".join(_subparsers(commands["data"])["convert"].format_help().split())


def test_eval_list_tasks_and_compare_help(capsys):
    from qzhou.evaluation.tasks import builtin_tasks

    code, out, _ = run_main(capsys, "eval", "--list-tasks")
    assert code == 0 and all(name in out for name in builtin_tasks())
    r = cli("eval", "compare", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: qzhou eval compare") and "--out OUT" in r.stdout
    assert "--tasks" not in r.stdout


def test_a_model_folder_named_compare_is_evaluable(tiny_model, tmp_path, monkeypatch):
    from qzhou.evaluation.cli import cmd_compare, cmd_eval

    monkeypatch.chdir(tmp_path)
    assert parse(["eval", "compare", "a.json", "b.json"]).func is cmd_compare
    shutil.copytree(tiny_model, tmp_path / "compare")
    args = parse(["eval", "compare", "--tasks", "STSBenchmark"])
    assert args.func is cmd_eval and args.model == "compare"
    assert parse(["eval", "compare", "a.json"]).func is cmd_compare  # without --tasks it is still the command


def _bundled_gguf() -> Path:
    from qzhou.default_model import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(f"the bundled model is not installed: {e}")


@pytest.mark.slow
def test_real_default_model_by_name_and_its_gguf_conversion(tmp_path):
    gguf = _bundled_gguf()
    r = cli("info", "default", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["parameters"] == 134_515_008  # SmolLM2-135M's backbone
    r = cli("convert", str(gguf), str(tmp_path / "emb"), "--attention", "bidirectional", "--pooling", "mean")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "Pass `dtype=torch.float32`" not in r.stderr and (tmp_path / "emb" / "model.safetensors").is_file()
