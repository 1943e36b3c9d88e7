"""Classification as retrieval among texts: an anchor, a text of its class (positive) and texts of other classes
(negatives); InfoNCE that never treats a same-class text as a negative. Symmetric: every text carries the
instruction."""

from __future__ import annotations

import torch

from qzhou.losses import class_masked_infonce
from qzhou.training.distributed import gather, gather_labels
from qzhou.training.objectives.base import LossConfig, Objective, Role, register
from qzhou.training.objectives.retrieval import drawn_part


def classification_loss(cfg: LossConfig, anchor, pos, neg, labels, neg_labels) -> torch.Tensor:
    return class_masked_infonce(gather(anchor), gather(pos), gather(neg), gather_labels(labels),
                                gather_labels(neg_labels), tau=cfg.tau)


@register
class Classification(Objective):
    task = "classification"
    task_type = "Classification"
    record_schema = "classification"
    roles = (Role("anchor", "query", "query"), Role("positive", "document", "passage"),
             Role("negative", "document", "passage"))

    def collate(self, records, instruction, part=None):
        mine = drawn_part(self.rng, records, self.cfg.hard_negatives, instruction, part)
        anchors, positives, negatives, neg_labels = [], [], [], []
        for r, positive, picks, chosen in mine:
            anchors.append(self.text("anchor", r["query"], chosen))
            positives.append(self.text("positive", positive, chosen))
            negatives.extend(self.text("negative", r["neg"][j], chosen) for j in picks)
            neg_labels.extend(r["neg_labels"][j] for j in picks)
        rows = {"anchor": self.tokenize("anchor", anchors), "positive": self.tokenize("positive", positives),
                "negative": self.tokenize("negative", negatives)}
        return rows, {"labels": torch.tensor([r["label"] for r, *_ in mine], dtype=torch.long),
                      "neg_labels": torch.tensor(neg_labels, dtype=torch.long)}

    def loss(self, embeddings, labels):
        return classification_loss(self.loss_config, embeddings["anchor"], embeddings["positive"],
                                   embeddings["negative"], labels["labels"], labels["neg_labels"])
