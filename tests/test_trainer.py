"""The trainer end to end on a tiny model: two stages, outputs, exact resume after an interruption, and a
NaN loss that stops with a clear message while the last good checkpoint stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from qzhou import Embedder
from qzhou.cli import main
from qzhou.training import trainer as trainer_mod
from qzhou.training.objectives.retrieval import Retrieval
from qzhou.training.recipe import load_recipe
from qzhou.training.trainer import TrainingError, train

W = "the cat dog fox bird fish runs jumps sleeps eats quick brown lazy red blue green big small".split()


def sent(i: int, n: int = 5) -> str:
    return " ".join(W[(i * 7 + k * 3) % len(W)] for k in range(n)) + f" {W[i % len(W)]}"


def write_data(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ret = [{"query": sent(i, 3), "pos": [sent(i + 1)], "neg": [sent(i + 5), sent(i + 9)]} for i in range(12)]
    sts = [{"text1": sent(i), "text2": sent(i + 2), "score": float(i % 5)} for i in range(12)]
    cls = [{"query": sent(i), "pos": [sent(i + 3)], "neg": [sent(i + 4)], "label": i % 3, "neg_labels": [(i + 1) % 3]}
           for i in range(12)]
    for name, rows in (("ret", ret), ("sts", sts), ("cls", cls)):
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def recipe(tmp_path: Path, base: Path, **extra) -> Path:
    write_data(tmp_path / "data")
    raw = {
        "model": {"base": str(base), "attention": "bidirectional", "pooling": "mean"},
        "datasets": [{"name": "ret", "path": "data/ret.jsonl", "task": "retrieval", "instruction": "Find it"},
                     {"name": "sts", "path": "data/sts.jsonl", "task": "sts", "batch_size": 6},
                     {"name": "cls", "path": "data/cls.jsonl", "task": "classification"}],
        "stages": [{"name": "stage1", "datasets": ["ret"], "steps": 3, "lr": 1e-3},
                   {"name": "stage2", "datasets": ["ret", "sts", "cls"], "steps": 6, "lr": 1e-3, "retrieval_share": 0.5}],
        "batch_size": {"retrieval": 4, "sts": 6, "classification": 4},
        "output_dir": str(tmp_path / "out"), "hard_negatives": 2, "query_max_length": 16, "passage_max_length": 24,
        "log_every": 2,
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def weights(folder: Path) -> torch.Tensor:
    e = Embedder.load(folder, dtype="float32")
    return torch.cat([p.detach().flatten() for p in e.backbone.parameters()])


def killed_and_resumed(path: Path, monkeypatch, stage: str, step: int) -> Path:
    """Train the recipe, killed right after `stage` wrote its checkpoint at `step`, then rerun the same command;
    -> the resumed run's final folder."""
    real = trainer_mod.write_checkpoint

    def interrupt(accelerator, model, stage_dir, at, *args, **kwargs):
        real(accelerator, model, stage_dir, at, *args, **kwargs)
        if stage_dir.name == stage and at == step:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(trainer_mod, "write_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(path))
    monkeypatch.setattr(trainer_mod, "write_checkpoint", real)
    return train(load_recipe(path))


def test_two_stages_and_outputs(tmp_path, base_dirs):
    path = recipe(tmp_path, base_dirs["llama"], chunk_size=2)
    assert main(["train", str(path)]) == 0
    out = tmp_path / "out"
    for stage, steps in (("stage1", 3), ("stage2", 6)):
        d = out / stage
        assert (d / "final" / "modules.json").is_file() and (d / "loss.png").stat().st_size > 1000
        assert len((d / "losses.jsonl").read_text().splitlines()) == steps
        assert yaml.safe_load((d / "config.yaml").read_text())["chunk_size"] == 2
    tasks = {json.loads(x)["task"] for x in (out / "stage2" / "losses.jsonl").read_text().splitlines()}
    assert tasks <= {"retrieval", "sts", "classification"} and len(tasks) >= 2
    base, s1, s2 = weights(base_dirs["llama"]), weights(out / "stage1" / "final"), weights(out / "stage2" / "final")
    assert not torch.equal(base, s1) and not torch.equal(s1, s2)
    e = Embedder.load(out / "stage2" / "final", dtype="float32")
    assert (e.config.attention, e.config.pooling) == ("bidirectional", "mean")


def test_exact_resume_after_interruption(tmp_path, base_dirs, monkeypatch):
    path = recipe(tmp_path / "a", base_dirs["qwen2"], checkpoint_every=2)
    straight = train(load_recipe(path))
    expected = weights(straight)

    path_b = recipe(tmp_path / "b", base_dirs["qwen2"], checkpoint_every=2)
    resumed = killed_and_resumed(path_b, monkeypatch, "stage2", 2)
    assert torch.allclose(weights(resumed), expected, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, base_dirs, monkeypatch):
    path = recipe(tmp_path, base_dirs["qwen2"], checkpoint_every=1)
    real = Retrieval.loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(Retrieval, "loss", sometimes_nan)
    with pytest.raises(TrainingError, match=r"stage1: loss is nan at step 3 \(dataset 'ret'\); last good checkpoint: .*checkpoint-2"):
        train(load_recipe(path))
    assert (tmp_path / "out" / "stage1" / "checkpoint-2" / "model" / "modules.json").is_file()


def test_recipe_errors(tmp_path, base_dirs):
    path = recipe(tmp_path, base_dirs["qwen2"], learning_rate=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        load_recipe(path)
    path = recipe(tmp_path, base_dirs["qwen2"])
    with pytest.raises(ValueError, match="unknown datasets"):
        load_recipe(path, ["stages.0.datasets=[nope]"])
    assert load_recipe(path, ["stages.1.steps=7", "tau=0.05"]).stages[1].steps == 7


def test_lora_merged_on_save(tmp_path, base_dirs):
    path = recipe(tmp_path, base_dirs["qwen3"], lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    cfg = load_recipe(path, ["stages.0.steps=2", "stages.1.steps=2"])
    final = train(cfg)
    folder_files = {p.name for p in final.iterdir()}
    assert "adapter_config.json" not in folder_files and "model.safetensors" in folder_files
    base, tuned = weights(base_dirs["qwen3"]), weights(final)
    assert base.shape == tuned.shape and not torch.equal(base, tuned)


def test_bf16_autocast_checkpoint_cadence_and_trackers(tmp_path, base_dirs, monkeypatch):
    """precision bf16-mixed: forwards run under CPU autocast and training follows fp32 closely; per-stage checkpoint
    cadence and keep_checkpoints; the TensorBoard tracker writes into STAGE/tb."""
    from qzhou.training.objectives import Objective

    seen = []
    build = Objective.build_model.__func__

    def spy(cls, cfg, source, first_stage):
        model = build(cls, cfg, source, first_stage)
        model.register_forward_hook(lambda m, args, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
        return model

    monkeypatch.setattr(Objective, "build_model", classmethod(spy))
    stages = [{"name": "stage1", "datasets": ["ret"], "steps": 3, "lr": 1e-4, "checkpoint_every": 1,
               "keep_checkpoints": 3},
              {"name": "stage2", "datasets": ["ret", "sts", "cls"], "steps": 4, "lr": 1e-4, "checkpoint_every": 2}]
    fp32 = train(load_recipe(recipe(tmp_path / "a", base_dirs["qwen2"], stages=stages)))
    assert not any(on for on, _ in seen)
    seen.clear()
    bf16 = train(load_recipe(recipe(tmp_path / "b", base_dirs["qwen2"], stages=stages, precision="bf16-mixed")))
    assert seen and all(on for on, _ in seen) and {dtype for _, dtype in seen} <= {torch.bfloat16, torch.float32}
    for stage in ("stage1", "stage2"):
        a, b = ([json.loads(x)["loss"] for x in (out.parent.parent / stage / "losses.jsonl").read_text().splitlines()]
                for out in (fp32, bf16))
        assert all(abs(x - y) <= 0.05 * abs(x) for x, y in zip(a, b)), (stage, a, b)
    out = tmp_path / "b" / "out"
    assert sorted(p.name for p in (out / "stage1").glob("checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3)]
    assert sorted(p.name for p in (out / "stage2").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "stage2" / "tb").rglob("*"))


def test_lora_resume_and_unmerged_adapter(tmp_path, base_dirs, monkeypatch):
    """LoRA with merge_on_save false: each stage's final folder holds the adapter alone (for the recipe's base),
    stage 2 keeps training stage 1's adapter, and a run interrupted after a checkpoint resumes to the same adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "merge_on_save": False}
    straight = train(load_recipe(recipe(tmp_path / "a", base_dirs["qwen3"], lora=lora, checkpoint_every=2)))
    path_b = recipe(tmp_path / "b", base_dirs["qwen3"], lora=lora, checkpoint_every=2)
    resumed = killed_and_resumed(path_b, monkeypatch, "stage2", 4)
    a, b = (load_file(str(f / "adapter_model.safetensors")) for f in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    stage1 = load_file(str(tmp_path / "a" / "out" / "stage1" / "final" / "adapter_model.safetensors"))
    assert stage1.keys() == a.keys()
    b_keys = [k for k in a if "lora_B" in k]  # B starts at zero: stage 2 moved on from stage 1's adapter
    assert all(stage1[k].abs().sum() > 0 for k in b_keys) and not all(torch.equal(stage1[k], a[k]) for k in a)
    for folder in (tmp_path / "a" / "out" / "stage1" / "final", straight):
        assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    tuned = PeftModel.from_pretrained(AutoModel.from_pretrained(base_dirs["qwen3"]), straight).merge_and_unload()
    base = weights(base_dirs["qwen3"])
    got = torch.cat([p.detach().flatten() for p in tuned.parameters()])
    assert got.shape == base.shape and not torch.equal(got, base)
