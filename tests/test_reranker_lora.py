"""LoRA training of the reranker (`qzhou train` with `task: reranker` and `lora:`) on the tiny Qwen3ForCausalLM: the
loss falls, the final folder holds the merged weights and scores exactly as peft's own merge of the trained adapter,
the output layer stays untouched, gradient checkpointing changes nothing, a killed run resumes to the same weights,
a gathered (FSDP / ZeRO-3) state saves the same folder, and the refusals say why. The merge arithmetic itself is
checked against peft in tests/test_saving.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reranker_support import write_causal
from safetensors.torch import load_file
from test_reranker_train import QUERIES, TOPICS, data_loss, recipe, weights
from test_trainer import killed_and_resumed

from qzhou import Reranker
from qzhou.training.objectives.reranker import build_reranker
from qzhou.training.recipe import load_recipe
from qzhou.training.saving import gathered_state, inner_name, save_model
from qzhou.training.trainer import train

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
PAIRS = [(q, t) for q in QUERIES[:2] for t in TOPICS]
INSTRUCTION = "Given a query, retrieve relevant passages"


def lora_recipe(tmp_path: Path, base: Path, lora: dict | None = None, **extra) -> Path:
    stages = [{"name": "stage1", "datasets": ["rr"], "steps": 8, "lr": 5e-3}]
    return recipe(tmp_path, base, lora=lora or LORA, stages=stages, checkpoint_every=4, **extra)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_causal(tmp_path_factory.mktemp("rrl") / "qwen3")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base):
    """One uninterrupted LoRA run: (recipe path, final folder)."""
    path = lora_recipe(tmp_path_factory.mktemp("lora-run"), base)
    return path, train(load_recipe(path))


def peft_merged(base: Path, adapter_pt: Path) -> Reranker:
    """The reference: the base reranker with the checkpoint's adapter loaded by peft and merged by peft."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    r = Reranker.load(base, dtype="float32")
    model = get_peft_model(r.model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear"))
    set_peft_model_state_dict(model, torch.load(adapter_pt, weights_only=False))
    return Reranker(model.merge_and_unload(), r.tokenizer, r.config)


def test_lora_stage_trains_and_saves_the_merged_model(base, trained):
    _, final = trained
    assert data_loss(final) < data_loss(base) - 0.05
    assert "model.safetensors" in {p.name for p in final.iterdir()} and not (final / "adapter_config.json").exists()
    loaded = Reranker.load(final, dtype="float32")
    reference = peft_merged(base, final.parent / "checkpoint-8" / "adapter.pt")
    ours = loaded.score(PAIRS, instruction=INSTRUCTION)
    np.testing.assert_allclose(ours, reference.score(PAIRS, instruction=INSTRUCTION), atol=1e-5)
    untrained = Reranker.load(base, dtype="float32").score(PAIRS, instruction=INSTRUCTION)
    assert np.abs(ours - untrained).max() > 1e-2
    saved, original = load_file(final / "model.safetensors"), load_file(base / "model.safetensors")
    assert saved.keys() == original.keys()
    assert torch.equal(saved["lm_head.weight"], original["lm_head.weight"])  # no adapter on the output layer
    assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"],
                           original["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(saved["model.embed_tokens.weight"], original["model.embed_tokens.weight"])


def test_gradient_checkpointing_changes_nothing(tmp_path, base, trained):
    path = lora_recipe(tmp_path, base, model={"base": str(base), "gradient_checkpointing": True})
    r = build_reranker(load_recipe(path), str(base), True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in r.modules())
    final = train(load_recipe(path))
    assert torch.allclose(weights(final), weights(trained[1]), atol=1e-5)


def test_exact_resume_after_interruption(tmp_path, base, trained, monkeypatch):
    resumed = killed_and_resumed(lora_recipe(tmp_path, base), monkeypatch, "stage1", 4)
    assert torch.allclose(weights(resumed), weights(trained[1]), atol=1e-6)
    assert not torch.allclose(weights(resumed), weights(base), atol=1e-4)


def test_gathered_state_saves_the_same_folder(tmp_path, base, trained):
    """Under FSDP / ZeRO-3 the final folder is written from `accelerator.get_state_dict` (the whole module's keys):
    gathered_state keys it as the inner module's own, for the merged LoRA save and for a full reranker's save."""
    from accelerate import DistributedType

    cfg = load_recipe(trained[0])
    r = build_reranker(cfg, str(trained[1]), True)  # a LoRA-wrapped reranker with nonzero weights everywhere
    with torch.no_grad():
        for name, p in r.named_parameters():
            if "lora_B" in name:
                p.normal_()
    sharded = SimpleNamespace(distributed_type=DistributedType.FSDP, get_state_dict=lambda m: m.state_dict(),
                              unwrap_model=lambda m: m)
    assert inner_name(r) == "model"
    state = gathered_state(sharded, r)
    assert state.keys() == r.model.state_dict().keys()
    local, gathered = save_model(r, tmp_path / "local", cfg), save_model(r, tmp_path / "gathered", cfg, state)
    a, b = load_file(local / "model.safetensors"), load_file(gathered / "model.safetensors")
    assert a.keys() == b.keys() == load_file(base / "model.safetensors").keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    full = Reranker.load(base, dtype="float32")
    state = {k: torch.randn_like(v) for k, v in gathered_state(sharded, full).items()}
    assert state.keys() == full.model.state_dict().keys()
    full.save(tmp_path / "full", state_dict=dict(state))
    saved = load_file(tmp_path / "full" / "model.safetensors")
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)


def test_refusals(tmp_path, base):
    cfg = load_recipe(lora_recipe(tmp_path, base, lora={**LORA, "merge_on_save": False}))
    with pytest.raises(ValueError, match="merge_on_save: false is not supported for a reranker"):
        train(cfg)
    cfg = load_recipe(lora_recipe(tmp_path, base, lora={**LORA, "target_modules": ["q_proj", "lm_head"]}))
    with pytest.raises(ValueError, match="adapter on the output layer"):
        train(cfg)
    cfg = load_recipe(lora_recipe(tmp_path, base, lora={**LORA, "target_modules": r".*(lm_head|v_proj)"}))
    with pytest.raises(ValueError, match="adapter on the output layer"):
        build_reranker(cfg, str(base), True)


def test_tied_output_layer_merges_and_loads(tmp_path):
    """A base whose output layer is its input embeddings (SmolLM2, Qwen3-0.6B): the merged folder loads and scores as
    peft's merge of the same adapter, and the tied output layer keeps its weights."""
    tied = write_causal(tmp_path / "tied", tie=True, seed=3)
    cfg = load_recipe(lora_recipe(tmp_path, tied))
    r = build_reranker(cfg, str(tied), True)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in r.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    folder = save_model(r, tmp_path / "final", cfg)
    reference = Reranker(r.model.merge_and_unload(), r.tokenizer, r.config)
    ours = Reranker.load(folder, dtype="float32")
    expected = reference.score(PAIRS, instruction=INSTRUCTION, return_logits=True)[1]
    np.testing.assert_allclose(ours.score(PAIRS, instruction=INSTRUCTION, return_logits=True)[1], expected, atol=1e-5)
    untrained = Reranker.load(tied, dtype="float32").score(PAIRS, instruction=INSTRUCTION, return_logits=True)[1]
    assert np.abs(expected - untrained).max() > 1e-2
    assert torch.equal(ours.causal_lm.lm_head.weight, Reranker.load(tied, dtype="float32").causal_lm.lm_head.weight)


@pytest.mark.slow
def test_fsdp_two_processes_save_the_single_process_weights(tmp_path, base):
    """LoRA reranker under FSDP2 with 2 CPU processes (tests/test_trainer_fsdp_cpu.py's launch): the final folder,
    merged from the state gathered from the shards, holds the weights of the one-process run on the same global
    batches. Slow: two `accelerate launch` processes."""
    import yaml
    from test_trainer_distributed import run
    from test_trainer_fsdp_cpu import launch

    single = lora_recipe(tmp_path / "single", base)
    run(["-m", "qzhou.cli", "train", str(single)])
    fsdp = lora_recipe(tmp_path / "fsdp", base)
    raw = yaml.safe_load(fsdp.read_text())
    raw["datasets"][0]["batch_size"] = 2  # per process: the same global batch of 4
    fsdp.write_text(yaml.safe_dump(raw))
    launch(fsdp)
    engine = tmp_path / "fsdp" / "out" / "stage1" / "checkpoint-8" / "engine"
    assert (engine / "pytorch_model_fsdp.bin").is_file()  # it ran sharded: the checkpoint is the engine's
    wa, wb = (weights(tmp_path / name / "out" / "stage1" / "final") for name in ("single", "fsdp"))
    assert torch.allclose(wa, wb, atol=2e-5), (wa - wb).abs().max()
    assert not torch.allclose(wb, weights(base), atol=1e-4)
