"""The training loop: `train(cfg) -> Path`. Stage k starts from stage k−1's output.

A loop on accelerate (device placement, DDP / DeepSpeed / FSDP through `accelerate launch`, bf16 autocast) rather
than HF Trainer: each batch comes from one dataset with its own objective and batch size. This file only wires the
pieces: the sampler picks a batch, the dataset's `Objective` collates it, `pack_and_embed` embeds it (merged
forwards, length buckets, GradCache), the objective's loss goes back through the packer, then the optimizer step,
logging (accelerate's trackers) and the checkpoint cadence. Engine edge cases are in `engines.py`.

Per stage: output_dir/STAGE/{checkpoint-N/, final/, config.yaml, losses.jsonl, loss.png, tb/}. Rerunning the same
command resumes exactly from the newest checkpoint. A NaN/Inf loss stops with a message naming the step and
dataset, and the last good checkpoint stays.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from qzhou.data.manifest import load_records
from qzhou.data.readers import DataError
from qzhou.data.sampler import sampler_for
from qzhou.training.engines import adamw, finish_trackers, make_accelerator, packing_engine, patch_deepspeed, reduce_sum
from qzhou.training.logs import write_losses
from qzhou.training.objectives import objective_for
from qzhou.training.packing import Packing, pack_and_embed
from qzhou.training.recipe import StageSpec, TrainConfig
from qzhou.training.saving import (
    build_model,
    gathered_state,
    latest_checkpoint,
    restore_checkpoint,
    save_model,
    write_checkpoint,
)


class TrainingError(RuntimeError):
    pass


class StageRun:
    """One stage's state: engine, model, objectives, sampler, optimizer; `step()` trains one global batch."""

    def __init__(self, cfg: TrainConfig, stage: StageSpec, source: str, first_stage: bool, stage_dir: Path):
        from transformers import get_scheduler

        self.cfg, self.stage, self.stage_dir = cfg, stage, stage_dir
        self.accelerator = acc = make_accelerator(cfg, stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        specs = {d.name: d for d in cfg.datasets}
        self.datasets = [specs[n] for n in stage.datasets]
        self.records = [load_records(d) for d in self.datasets]
        kinds = [objective_for(d.task) for d in self.datasets]
        self.world, self.rank = acc.num_processes, acc.process_index
        for d, recs in zip(self.datasets, self.records):
            if len(recs) < self.world:
                raise DataError(f"{d.path}: {len(recs)} records for {self.world} processes; every process needs one")
        resume = latest_checkpoint(stage_dir)
        model = build_model(cfg, kinds, source, resume, first_stage)
        self.collate_rng = random.Random(cfg.seed)  # shared by the objectives: one draw sequence, saved in checkpoints
        self.objectives = [kind(cfg, model, self.collate_rng) for kind in kinds]
        sizes = [cfg.batch_size_of(d) for d in self.datasets]
        # every process draws the same global batch (batch size per process × processes) and embeds its own slice
        self.sampler = sampler_for(self.records, [k.retrieval for k in kinds], [b * self.world for b in sizes],
                                   alpha=cfg.alpha, retrieval_share=stage.retrieval_share, seed=cfg.seed)
        optimizer = adamw([p for p in model.parameters() if p.requires_grad], stage.lr, stage.weight_decay)
        scheduler = get_scheduler(stage.schedule, optimizer, num_warmup_steps=stage.warmup_steps,
                                  num_training_steps=stage.steps)
        patch_deepspeed(acc, cfg, max(sizes))
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        side, pad_id = kinds[0].padding(model)
        # length buckets in one process only: several processes run one merged forward each per batch
        self.packing = Packing(side, pad_id, buckets=cfg.length_buckets if self.world == 1 else 1,
                               chunk_size=cfg.chunk_size, merge=cfg.merge_forwards)
        self.engine = packing_engine(acc, self.model)
        self.step_count, self.losses = 0, []
        if resume:
            self.step_count, self.losses = restore_checkpoint(acc, resume, self.optimizer, self.scheduler,
                                                              self.sampler, self.collate_rng)
            acc.print(f"resuming {stage.name} from {resume} (step {self.step_count})")

    def step(self) -> dict:
        """One global batch: collate this process's slice, embed, loss, backward, optimizer step; -> its log line."""
        started = time.perf_counter()
        d, rows = self.sampler.next_batch()
        spec, objective = self.datasets[d], self.objectives[d]
        if len(rows) < self.world:  # every process sees the same rows, so all of them stop here together
            raise DataError(f"{spec.path}: a batch of {len(rows)} distinct rows for {self.world} processes (rows "
                            f"repeat texts); every process needs one: add data or lower the process count")
        bounds = np.linspace(0, len(rows), self.world + 1).round().astype(int)
        token_rows, labels = objective.collate([self.records[d][i] for i in rows], spec.instruction,
                                               part=slice(bounds[self.rank], bounds[self.rank + 1]))
        labels = {k: v.to(self.accelerator.device) for k, v in labels.items()}
        batch = pack_and_embed(token_rows, self.model, self.packing, self.engine)
        with self.accelerator.autocast():
            loss = objective.loss(batch.embeddings, labels)
        # backward outside autocast: on CPUs autograd runs in this thread, where autocast would also recast inside
        # the backward formulas (the HF Trainer's order too)
        batch.backward(loss)
        if not torch.isfinite(loss):
            raise TrainingError(f"{self.stage.name}: loss is {loss.item()} at step {self.step_count + 1} (dataset "
                                f"{spec.name!r}); last good checkpoint: {latest_checkpoint(self.stage_dir) or 'none'}."
                                f" Lower the learning rate or check the data.")
        # inf: measure only. The prepared model's parameters, all of them: FSDP2 replaces them by sharded DTensors,
        # and accelerate clips with the norm over every process's shard only when given exactly these
        norm = self.accelerator.clip_grad_norm_(list(self.model.parameters()), self.cfg.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        real = sum(len(r) for role_rows in token_rows.values() for r in role_rows)
        tokens, computed = reduce_sum(self.accelerator, [real, batch.computed_tokens])
        return {"step": self.step_count, "task": spec.task, "dataset": spec.name, "loss": round(loss.item(), 5),
                "tokens": tokens, "padded_tokens": computed, "seconds": round(time.perf_counter() - started, 4),
                "grad_norm": None if norm is None else round(float(norm), 6)}

    def checkpoint(self) -> dict | None:
        return write_checkpoint(self.accelerator, self.model, self.stage_dir, self.step_count, self.cfg,
                                self.optimizer, self.scheduler, self.sampler, self.collate_rng, self.losses,
                                keep=self.cfg.keep_checkpoints_of(self.stage))


def train_stage(cfg: TrainConfig, stage: StageSpec, source: str, first_stage: bool, stage_dir: Path) -> Path:
    from tqdm.auto import tqdm

    run = StageRun(cfg, stage, source, first_stage, stage_dir)
    acc = run.accelerator
    if acc.is_main_process:
        (stage_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    acc.init_trackers("tb")
    every = cfg.checkpoint_every_of(stage)
    weights, gathered_at = None, None  # the last checkpoint's gathered state (FSDP / ZeRO-3) and its step
    bar = tqdm(total=stage.steps, initial=run.step_count, desc=stage.name, disable=not acc.is_main_process)
    while run.step_count < stage.steps:
        line = run.step()
        run.losses.append(line)
        acc.log({f"loss/{line['task']}": line["loss"], "lr": run.scheduler.get_last_lr()[0]}, step=line["step"])
        bar.update(1)
        if line["step"] % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean([x['loss'] for x in run.losses[-cfg.log_every:]]):.4f}")
        if (every and line["step"] % every == 0) or line["step"] == stage.steps:
            weights, gathered_at = run.checkpoint(), line["step"]
    bar.close()
    if gathered_at != stage.steps:  # FSDP / ZeRO-3: full weights gathered (every process joins), unless the last
        weights = gathered_state(acc, run.model)  # step's checkpoint just did
    final = stage_dir / "final"
    if acc.is_main_process:
        save_model(acc.unwrap_model(run.model), final, cfg, weights)
        write_losses(run.losses, stage_dir)
    finish_trackers(acc)
    acc.wait_for_everyone()
    return final


def merge_stage(cfg: TrainConfig, stage, index: int, stage_dir: Path) -> Path:
    """A `merge:` stage (issue 12, `qzhou.merging.stage`): the main process merges the checkpoints an earlier stage
    kept into stage_dir/final; other processes wait for its DONE marker."""
    from qzhou.merging.stage import run_merge_stage

    if int(os.environ.get("RANK", "0")) != 0:
        while not (stage_dir / "DONE").is_file():
            time.sleep(1.0)
        return stage_dir / "final"
    return run_merge_stage(stage, cfg.output_dir / cfg.merge_source(index), stage_dir)


def train(cfg: TrainConfig) -> Path:
    """Run every stage in order; returns the final model folder of the last stage. A `merge:` stage (issue 12)
    turns an earlier stage's checkpoints into `source` (`merge_stage`)."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    source = cfg.model.base  # a folder, hub id, .gguf or "default": the loaders resolve it (loading.resolve_source)
    for i, stage in enumerate(cfg.stages):
        stage_dir = cfg.output_dir / stage.name
        if (stage_dir / "DONE").is_file():  # finished earlier: a rerun continues with the next stage
            source = str(stage_dir / "final")
            continue
        if isinstance(stage, StageSpec):
            source = str(train_stage(cfg, stage, source, i == 0, stage_dir))
        else:
            source = str(merge_stage(cfg, stage, i, stage_dir))
        if int(os.environ.get("RANK", "0")) == 0:
            (stage_dir / "DONE").write_text("ok\n")
    return Path(source)
