"""Model folders and checkpoints into and out of a training run, whichever engine holds the weights: the model a
stage starts from (base, previous stage, checkpoint, LoRA adapter), checkpoints, and the final folder.

Under DDP, one process or DeepSpeed ZeRO-1/2 the module holds the full weights. Under FSDP and ZeRO-3 each process
holds a shard: the full state is gathered first (`accelerator.get_state_dict`, a collective every process joins) and the
folder is written from it on the main process. LoRA is merged from a state dict (W + scaling · B A per adapted
linear), so the same code merges a gathered state and a local one and never copies the model.

Both trained classes are `Cls(module, tokenizer, config)` around one transformers module (`inner_name`): the
Embedder's backbone, the Reranker's *ForCausalLM. LoRA wraps that module, adapters are saved and loaded from it,
and a state dict handed to `Cls.save` is keyed as that module's own state dict.

A checkpoint folder holds `model/` (or `adapter.pt` for LoRA) and `training_state.pt` (sampler, the objectives'
collate RNG, RNG, step, losses; optimizer and scheduler for DDP / one process). Under FSDP / DeepSpeed the
optimizer, scheduler and model shards are the engine's own checkpoint in `engine/` (`accelerator.save_state`),
loaded with `load_state`.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from qzhou.modeling.embedder import Embedder

PEFT_PREFIX = "base_model.model."
#: module-name parts that engine wrappers add (FSDP, activation checkpointing) and state dicts leave out
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def engine_shards(accelerator) -> bool:
    """True where the engine owns the weights (FSDP, DeepSpeed): state is gathered and checkpoints are the engine's."""
    from accelerate import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def weights_sharded(accelerator) -> bool:
    """True where each process holds only a shard of the weights: FSDP and DeepSpeed ZeRO-3 (ZeRO-1/2 replicate)."""
    from accelerate import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def inner_name(model) -> str:
    """The attribute holding the transformers module a trained model wraps: "backbone" (Embedder), "model"
    (Reranker). LoRA goes on that module and state dicts passed to `save` are keyed as its own."""
    from qzhou.reranking.model import Reranker

    if isinstance(model, Embedder):
        return "backbone"
    if isinstance(model, Reranker):
        return "model"
    raise TypeError(f"{type(model).__name__} is neither an Embedder nor a Reranker; training.saving saves only those")


def inner(model) -> torch.nn.Module:
    """The transformers module (a peft model while LoRA trains it) that `model` wraps."""
    return getattr(model, inner_name(model))


def gathered_state(accelerator, model) -> dict[str, torch.Tensor] | None:
    """The inner module's full state dict (its own keys) under FSDP / ZeRO-3 (every process must call; the main
    process gets it), None elsewhere: the module's own weights are full there, and no process copies them."""
    if not weights_sharded(accelerator):
        return None
    state = accelerator.get_state_dict(model)
    prefix = inner_name(accelerator.unwrap_model(model)) + "."
    return {k.removeprefix(prefix): v for k, v in state.items()} if state else {}


def merge_lora_state(peft_model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A peft LoRA model's state dict -> the base model's state dict with every adapter merged:
    W' = W + scaling · (B @ A) (transposed for fan_in_fan_out layers), computed in float32, stored in W's dtype.
    `modules_to_save` copies replace their originals. DoRA and adapted embeddings are refused (not merged here)."""
    from peft.tuners.lora import LoraLayer

    adapter = peft_model.active_adapter if isinstance(peft_model.active_adapter, str) else peft_model.active_adapter[0]
    layers = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            for part in WRAPPER_PARTS:
                name = name.replace(part, "")
            if module.use_dora.get(adapter):
                raise NotImplementedError(f"{name}: DoRA adapters are not merged by qzhou; set lora.merge_on_save false")
            layers[name] = (module.scaling[adapter], bool(getattr(module, "fan_in_fan_out", False)))
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key or ".original_module." in key:
            if ".lora_embedding_" in key or ".lora_magnitude_" in key:
                raise NotImplementedError(f"{key}: only LoRA on linear layers is merged; set lora.merge_on_save false")
            continue
        merged[key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")] = value
    for name, (scaling, fan_in_fan_out) in layers.items():
        a, b = state[f"{name}.lora_A.{adapter}.weight"], state[f"{name}.lora_B.{adapter}.weight"]
        delta = (b.float() @ a.float()) * scaling
        key = f"{name.removeprefix(PEFT_PREFIX)}.weight"
        weight = merged[key]
        merged[key] = (weight.float() + (delta.T if fan_in_fan_out else delta)).to(weight.dtype)
    return merged


def save_model(m, folder: Path, cfg, state: dict[str, torch.Tensor] | None = None) -> Path:
    """A stage's model folder, written by the model's own `save` (Embedder: model-core format; Reranker: the
    CrossEncoder layout). `state`: the gathered inner-module state where the module holds a shard. LoRA is merged
    into the base weights unless `lora.merge_on_save` is false (then peft writes the adapter alone)."""
    if cfg.lora is None or not cfg.lora.merge_on_save:
        return m.save(folder, state_dict=state)
    module = inner(m)
    merged = merge_lora_state(module, module.state_dict() if state is None else state)
    return type(m)(module.get_base_model(), m.tokenizer, m.config).save(folder, state_dict=merged)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def checkpoints(stage_dir: Path) -> list[Path]:
    """A stage's complete checkpoint folders, oldest first (by step, not by name: checkpoint-10 after -9)."""
    return sorted(stage_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(stage_dir: Path) -> Path | None:
    found = checkpoints(stage_dir)
    return found[-1] if found else None


def write_checkpoint(accelerator, model, stage_dir: Path, step: int, cfg, optimizer, scheduler, sampler,
                     collate_rng: random.Random, losses: list[dict], keep: int = 2) -> dict[str, torch.Tensor] | None:
    """Every process calls this (gathers and the engine's save are collectives); the main process writes the rest
    into a partial folder renamed when complete, and keeps the `keep` newest checkpoints. Returns the gathered state
    (`gathered_state`), so that a final save right after does not gather the weights again."""
    path = stage_dir / f"checkpoint-{step}"
    tmp = stage_dir / f".checkpoint-{step}.partial"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    state = gathered_state(accelerator, model)
    sharded = engine_shards(accelerator)
    if sharded:
        accelerator.save_state(str(tmp / "engine"))
        accelerator.wait_for_everyone()  # every process's files are in before the folder is renamed
    if main:
        unwrapped = accelerator.unwrap_model(model)
        if cfg.lora is not None:
            from peft import get_peft_model_state_dict

            torch.save(get_peft_model_state_dict(inner(unwrapped), state_dict=state), tmp / "adapter.pt")
        else:
            unwrapped.save(tmp / "model", state_dict=None if state is None else dict(state))  # save_pretrained empties it
        own = {} if sharded else {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save({"step": step, **own, "sampler": sampler.state_dict(), "collator_rng": collate_rng.getstate(),
                    "rng": rng_state(), "losses": losses}, tmp / "training_state.pt")
        tmp.rename(path)
        for old in checkpoints(stage_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return state


def restore_checkpoint(accelerator, checkpoint: Path, optimizer, scheduler, sampler,
                       collate_rng: random.Random) -> tuple[int, list[dict]]:
    """A checkpoint's training state into a prepared run (the weights were loaded with the model); -> (step, losses).
    FSDP / DeepSpeed: model shards, optimizer, scheduler and each process's RNG are the engine's checkpoint."""
    state = torch.load(checkpoint / "training_state.pt", weights_only=False)
    if engine_shards(accelerator):
        accelerator.load_state(str(checkpoint / "engine"))
    else:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    sampler.load_state_dict(state["sampler"])
    collate_rng.setstate(state["collator_rng"])
    return state["step"], state["losses"]


def load_adapter(model, file: Path) -> None:
    """LoRA adapter weights (a checkpoint's adapter.pt, or an adapter folder's safetensors) into the freshly wrapped
    inner module (`inner`)."""
    from peft import set_peft_model_state_dict

    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, weights_only=False)
    set_peft_model_state_dict(inner(model), state)


def build_model(cfg, kinds: list, source: str, resume: Path | None, first_stage: bool):
    """The module the stage trains, from its objectives' `build_model` hook (they must agree), at the newest
    checkpoint's weights when resuming."""
    builders = {kind.build_model.__func__ for kind in kinds}
    if len(builders) > 1:
        raise ValueError(f"the stage's tasks {[k.task for k in kinds]} train different models; split the stage")
    previous = Path(source) if cfg.lora is not None and (Path(source) / "adapter_config.json").is_file() else None
    if previous:  # the previous stage saved its adapter alone (merge_on_save false): this stage trains that adapter
        source, first_stage = cfg.model.base, True  # on the recipe's base, which every adapter folder applies to
    model = kinds[0].build_model(cfg, str(resume / "model") if resume and cfg.lora is None else source, first_stage)
    if cfg.lora is not None and (resume or previous):
        load_adapter(model, resume / "adapter.pt" if resume else previous / "adapter_model.safetensors")
    return model.train()
