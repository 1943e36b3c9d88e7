"""Retrieval: a query, one positive and up to `hard_negatives` hard negatives per record; InfoNCE over in-batch and
hard negatives gathered from every process (QZhou's loss, or Qwen3's with its false-negative margin)."""

from __future__ import annotations

import random
from typing import Any

import torch

from qzhou.losses import qwen3_infonce, qzhou_infonce
from qzhou.training.distributed import gather, gather_labels
from qzhou.training.objectives.base import LossConfig, Objective, Role, pick_instruction, register, text_key


def drawn_part(rng: random.Random, records: list[dict[str, Any]], k: int, instruction: str | list[str] | None,
               part: slice | None) -> list[tuple[dict[str, Any], str, list[int], str | None]]:
    """(record, positive, indices of up to k negatives, instruction) for the records in `part`. The documents are
    drawn for every record of the batch, in order, whatever `part` is: the draws a seed fixes, so processes
    together draw what one process would."""
    drawn = []
    for r in records:
        positive = rng.choice(r["pos"])
        picks = list(range(len(r.get("neg", []))))
        rng.shuffle(picks)
        drawn.append((r, positive, picks[:k]))
    return [(r, positive, picks, pick_instruction(r, instruction)) for r, positive, picks in drawn[part or slice(None)]]


def retrieval_loss(cfg: LossConfig, q, pos, neg=None, pos_keys=None, neg_keys=None) -> torch.Tensor:
    q, pos = gather(q), gather(pos)
    neg = gather(neg) if neg is not None else None
    if cfg.retrieval == "qzhou":
        return qzhou_infonce(q, pos, neg, tau=cfg.tau)
    keys = None
    if pos_keys is not None:
        keys = gather_labels(pos_keys)
        if neg is not None:
            keys = torch.cat([keys, gather_labels(neg_keys)])
    return qwen3_infonce(q, pos, neg, tau=cfg.tau, margin=cfg.margin, doc_keys=keys)


@register
class Retrieval(Objective):
    task = "retrieval"
    task_type = "Retrieval"
    record_schema = "retrieval"
    retrieval = True
    roles = (Role("query", "query", "query"), Role("positive", "document", "passage"),
             Role("negative", "document", "passage"))

    def collate(self, records, instruction, part=None):
        queries, positives, negatives = [], [], []
        for r, positive, picks, chosen in drawn_part(self.rng, records, self.cfg.hard_negatives, instruction, part):
            queries.append(self.text("query", r["query"], chosen))
            positives.append(self.text("positive", positive, chosen))
            negatives.extend(self.text("negative", r["neg"][j], chosen) for j in picks)
        rows = {"query": self.tokenize("query", queries), "positive": self.tokenize("positive", positives),
                "negative": self.tokenize("negative", negatives)}
        labels = {"pos_keys": torch.tensor([text_key(t) for t in positives], dtype=torch.long),
                  "neg_keys": torch.tensor([text_key(t) for t in negatives], dtype=torch.long)}
        return rows, labels

    def loss(self, embeddings, labels):
        return retrieval_loss(self.loss_config, embeddings["query"], embeddings["positive"], embeddings["negative"],
                              pos_keys=labels["pos_keys"], neg_keys=labels["neg_keys"])
