"""STS: sentence pairs with a graded score; CoSENT on the pairs' cosines, gathered from every process. Symmetric:
both texts carry the instruction and are cut at the passage length."""

from __future__ import annotations

import torch

from qzhou.losses import cosent
from qzhou.training.distributed import gather, gather_labels
from qzhou.training.objectives.base import LossConfig, Objective, Role, pick_instruction, register


def sts_loss(cfg: LossConfig, a, b, scores) -> torch.Tensor:
    return cosent(gather(a), gather(b), gather_labels(scores), tau=cfg.cosent_tau)


@register
class STS(Objective):
    task = "sts"
    task_type = "STS"
    record_schema = "sts"
    roles = (Role("text1", "query", "passage"), Role("text2", "document", "passage"))

    def collate(self, records, instruction, part=None):
        mine = records[part or slice(None)]
        chosen = [pick_instruction(r, instruction) for r in mine]
        rows = {role: self.tokenize(role, [self.text(role, r[role], i) for r, i in zip(mine, chosen)])
                for role in ("text1", "text2")}
        return rows, {"scores": torch.tensor([float(r["score"]) for r in mine])}

    def loss(self, embeddings, labels):
        return sts_loss(self.loss_config, embeddings["text1"], embeddings["text2"], labels["scores"])
