"""The loss of each task, on a batch's embeddings, with cross-device gathering: the one place the trainer asks
"what is this batch's loss". Losses themselves are pure functions in `qzhou.losses`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from qzhou.losses import class_masked_infonce, cosent, qwen3_infonce, qzhou_infonce
from qzhou.training.distributed import gather, gather_labels


@dataclass(frozen=True)
class LossConfig:
    retrieval: Literal["qzhou", "qwen3"] = "qzhou"
    tau: float = 0.02
    cosent_tau: float = 0.05
    margin: float = 0.1  # Qwen3's false-negative margin


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


def sts_loss(cfg: LossConfig, a, b, scores) -> torch.Tensor:
    return cosent(gather(a), gather(b), gather_labels(scores), tau=cfg.cosent_tau)


def classification_loss(cfg: LossConfig, anchor, pos, neg, labels, neg_labels) -> torch.Tensor:
    return class_masked_infonce(gather(anchor), gather(pos), gather(neg), gather_labels(labels),
                                gather_labels(neg_labels), tau=cfg.tau)
