"""`merge_checkpoints` on real (tiny) model folders: streaming = in-memory, shards, the embedder files and lineage,
sentence-transformers reading the result, refusals, LoRA inputs, and the `qzhou merge` command."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qzhou import Embedder
from qzhou.cli import main
from qzhou.merging.driver import merge_checkpoints
from qzhou.merging.methods import MergeSpec, merge_tensor

TEXTS = ["the quick brown fox", "a cat", "the dog runs over the lazy fox in paris", "blue"]


def perturbed(e: Embedder, folder, seed: int, scale: float = 0.05):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in e.backbone.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return e.save(folder)


@pytest.fixture(scope="module")
def folders(base_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-inputs")
    load = lambda **kw: Embedder.load(base_dirs["qwen2"], dtype="float32", attention="bidirectional",  # noqa: E731
                                      pooling="mean", **kw)
    out = {"A": load().save(root / "A"), "B": perturbed(load(), root / "B", 1), "C": perturbed(load(), root / "C", 2)}
    out["last"] = Embedder.load(base_dirs["qwen2"], dtype="float32", attention="bidirectional",
                                pooling="last").save(root / "last")
    out["llama"] = Embedder.load(base_dirs["llama"], dtype="float32", attention="bidirectional",
                                 pooling="mean").save(root / "llama")
    return out


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("method, base", [("slerp", None), ("multislerp", None), ("ties", "A"),
                                          ("dare-linear", "A")])
def test_streaming_equals_in_memory(folders, tmp_path, method, base):
    inputs = [folders["B"], folders["C"]] + ([folders["A"]] if base is None else [])
    spec = MergeSpec(method, density=0.5, seed=4)
    merge_checkpoints(inputs, method, out=tmp_path / "m", base=folders[base] if base else None, density=0.5, seed=4,
                      show_progress=False)
    got = weights(tmp_path / "m")
    states = [weights(p) for p in inputs]
    base_state = weights(folders[base]) if base else None
    assert set(got) == set(states[0])
    for name, value in got.items():
        ref = merge_tensor(name, [s[name] for s in states], spec, base_state[name] if base else None)
        assert torch.equal(value, ref), name


def test_sharded_inputs_keep_their_shards(folders, tmp_path):
    sharded = []
    for key in ("A", "B"):
        e = Embedder.load(folders[key], dtype="float32")
        folder = tmp_path / f"sharded-{key}"
        shutil.copytree(folders[key], folder)
        (folder / "model.safetensors").unlink()
        e.backbone.save_pretrained(folder, max_shard_size="60KB")
        sharded.append(folder)
    files = sorted(p.name for p in sharded[0].glob("*.safetensors"))
    assert len(files) > 2
    merge_checkpoints(sharded, "slerp", out=tmp_path / "m", t=0.3, show_progress=False)
    merge_checkpoints([folders["A"], folders["B"]], "slerp", out=tmp_path / "whole", t=0.3, show_progress=False)
    assert sorted(p.name for p in (tmp_path / "m").glob("*.safetensors")) == files
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    got = {}
    for name in files:
        got.update(load_file(str(tmp_path / "m" / name)))
    assert set(index["weight_map"]) == set(got)
    whole = weights(tmp_path / "whole")
    assert all(torch.equal(got[k], whole[k]) for k in whole)


def test_merged_folder_reads_the_same_in_sentence_transformers(folders, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "m"
    report = merge_checkpoints([folders["A"], folders["B"]], "slerp", out=out, show_progress=False)
    for name in ("qzhou_config.json", "modules.json", "1_Pooling/config.json", "config_sentence_transformers.json",
                 "tokenizer.json"):
        assert (out / name).read_bytes() == (folders["A"] / name).read_bytes()
    ours = Embedder.load(out, dtype="float32").encode(TEXTS)
    theirs = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours - Embedder.load(folders["A"], dtype="float32").encode(TEXTS)).max() > 1e-3  # it did merge
    lineage = json.loads((out / "merge.json").read_text())
    digest = hashlib.sha256((folders["A"] / "model.safetensors").read_bytes()).hexdigest()
    assert lineage["inputs"][0]["sha256"] == {"model.safetensors": digest}
    assert lineage["method"] == "slerp" and lineage["parameters"]["weights"] == [0.5, 0.5]
    assert lineage["tensors"] == report.tensors == len(weights(out))
    assert lineage["fallback_count"] == report.fallback_count


def test_copies_come_back_unchanged_and_fallbacks_are_counted(folders, tmp_path):
    copy = tmp_path / "A2"
    shutil.copytree(folders["A"], copy)
    report = merge_checkpoints([folders["A"], copy, folders["A"]], "slerp", out=tmp_path / "m", show_progress=False)
    got, ref = weights(tmp_path / "m"), weights(folders["A"])
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    zeros = sum(not v.any() for v in ref.values())  # Qwen2's q/k/v biases start at zero
    assert zeros > 0 and report.fallbacks == {"parallel": len(ref) - zeros, "zero": zeros}
    assert report.above_mergekit_dot == len(ref) - zeros
    bf16 = tmp_path / "bf16"
    Embedder.load(folders["B"], dtype="bfloat16").save(bf16)
    merge_checkpoints([bf16, bf16], "linear", out=tmp_path / "mb", show_progress=False)
    assert all(v.dtype == torch.bfloat16 for v in weights(tmp_path / "mb").values())


def test_mismatched_inputs_are_refused_naming_the_difference(folders, tmp_path):
    with pytest.raises(ValueError, match="model_type: 'qwen2' vs 'llama'"):
        merge_checkpoints([folders["A"], folders["llama"]], "slerp", out=tmp_path / "m1", show_progress=False)
    with pytest.raises(ValueError, match="pooling 'mean' vs 'last'"):
        merge_checkpoints([folders["A"], folders["last"]], "slerp", out=tmp_path / "m2", show_progress=False)
    short = Embedder.load(folders["B"], dtype="float32")
    short.keep_layers(1)
    short.save(tmp_path / "short")
    with pytest.raises(ValueError, match="num_hidden_layers: 2 vs 1"):
        merge_checkpoints([folders["A"], tmp_path / "short"], "linear", out=tmp_path / "m3", show_progress=False)
    tok = tmp_path / "tok"
    shutil.copytree(folders["B"], tok)
    data = json.loads((tok / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    (tok / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tokenizers' vocabularies differ"):
        merge_checkpoints([folders["A"], tok], "linear", out=tmp_path / "m4", show_progress=False)
    with pytest.raises(ValueError, match="is one of the inputs"):
        merge_checkpoints([folders["A"], folders["B"]], "linear", out=folders["B"], show_progress=False)
    with pytest.raises(ValueError, match="add --base"):
        merge_checkpoints([folders["A"], folders["B"]], "ties", out=tmp_path / "m5", show_progress=False)


def test_lora_adapter_is_merged_into_its_base_first(folders, tmp_path):
    from peft import LoraConfig, get_peft_model

    e = Embedder.load(folders["A"], dtype="float32")
    e.backbone = get_peft_model(e.backbone, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in e.backbone.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    adapter = e.save(tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    state = {k: v.detach().clone() for k, v in e.backbone.state_dict().items()}
    report = merge_checkpoints([adapter], "linear", out=tmp_path / "m", show_progress=False)
    got, base = weights(tmp_path / "m"), weights(folders["A"])
    for layer in range(2):
        pre = f"base_model.model.layers.{layer}.self_attn.q_proj"
        delta = (8 / 4) * state[f"{pre}.lora_B.default.weight"] @ state[f"{pre}.lora_A.default.weight"]
        key = f"layers.{layer}.self_attn.q_proj.weight"
        torch.testing.assert_close(got[key], base[key] + delta, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got[key], base[key])
    assert torch.equal(got["layers.0.self_attn.k_proj.weight"], base["layers.0.self_attn.k_proj.weight"])
    assert report.inputs[0]["lora"]["base"] == str(folders["A"].resolve())
    assert (tmp_path / "m" / "qzhou_config.json").is_file()


def test_cli_merges_and_reports_errors_in_one_line(folders, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["merge", str(folders["A"]), str(folders["B"]), "--method", "slerp", "--t", "0.25",
                 "--out", str(out), "--no-hash"]) == 0
    printed = capsys.readouterr().out
    assert "linear fallbacks: 6 (zero 6)" in printed  # the zero-initialised biases only
    lineage = json.loads((out / "merge.json").read_text())
    assert lineage["parameters"]["t"] == 0.25 and lineage["inputs"][0]["sha256"] == {}
    assert main(["merge", str(folders["A"]), str(folders["llama"]), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qzhou merge: error: cannot merge") and "\n" not in err
    with pytest.raises(SystemExit):
        main(["merge", str(folders["A"]), "--method", "soup", "--out", str(tmp_path / "y")])


def test_plain_hf_causal_lm_folders_merge_too(tokenizer, tmp_path):
    """Rerankers are plain *ForCausalLM folders (no qzhou / sentence-transformers files)."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             tie_word_embeddings=False))
        model.save_pretrained(tmp_path / f"r{seed}")
        tokenizer.save_pretrained(tmp_path / f"r{seed}")
        folders.append(tmp_path / f"r{seed}")
    merge_checkpoints(folders, "slerp", out=tmp_path / "m", t=0.7, show_progress=False)
    states = [weights(f) for f in folders]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").state_dict()
    assert "lm_head.weight" in states[0]
    for name in states[0]:
        ref = merge_tensor(name, [s[name] for s in states], MergeSpec("slerp", t=0.7))
        assert torch.equal(merged[name], ref), name
