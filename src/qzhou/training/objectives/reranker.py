"""Reranker training (Qwen3-Reranker format) on the project's retrieval records (`query`, `pos`, `neg`): each
(query, document) prompt is one row, the model's row is [z_no, z_yes] at the last position (`Reranker.forward`).

- `reranker` (point-wise, Qwen3's eq. 2): −log p(label | prompt) over the yes/no pair, label yes for the positive
  and no for each hard negative; the mean over the pairs.
- `reranker-listwise` (FlagEmbedding's / ms-swift's list-wise loss): per record, softmax cross-entropy over the
  yes-logits of its positive and its negatives, the positive the target; the mean over the records.

Hard negatives: `qzhou mine` with a qzhou embedder writes them into the records. The recipe's `hard_negatives`
caps the negatives per record (drawn as the retrieval objective draws them); `query_max_length +
passage_max_length` plus the template caps each prompt, and only the document is cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qzhou.training.objectives.base import Objective, Role, activation_checkpointing, register, wrap_lora
from qzhou.training.objectives.retrieval import drawn_part


def pointwise_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n, 2) logits [z_no, z_yes] and (n,) labels (1 = yes, 0 = no) -> mean of −log softmax([z_no, z_yes])[label]."""
    return F.cross_entropy(logits.float(), labels.long())


def listwise_loss(pos_yes: torch.Tensor, neg_yes: torch.Tensor, neg_counts: torch.Tensor) -> torch.Tensor:
    """(B,) yes-logits of the positives, (N,) of the negatives in record order, (B,) negatives per record ->
    mean over records of −log softmax([pos_i, its negatives])[0]. Records may have different negative counts."""
    counts = neg_counts.long().tolist()
    if sum(counts) != neg_yes.shape[0] or len(counts) != pos_yes.shape[0]:
        raise ValueError(f"neg_counts {counts} do not match {pos_yes.shape[0]} positives and {neg_yes.shape[0]} "
                         "negatives")
    width = 1 + max(counts, default=0)
    scores = pos_yes.new_full((len(counts), width), float("-inf"), dtype=torch.float32)
    scores[:, 0] = pos_yes.float()
    rows = torch.repeat_interleave(torch.arange(len(counts), device=neg_yes.device), neg_counts.long())
    starts = torch.cumsum(neg_counts.long(), 0) - neg_counts.long()
    cols = torch.arange(neg_yes.shape[0], device=neg_yes.device) - starts[rows] + 1
    scores = scores.index_put((rows, cols), neg_yes.float())
    return F.cross_entropy(scores, torch.zeros(len(counts), dtype=torch.long, device=scores.device))


def build_reranker(cfg, source: str, first: bool):
    """The Reranker a stage trains (fp32 on CPU; the accelerator places it), with gradient checkpointing and LoRA
    (on the causal LM, never on its output layer: see `check_output_layer`)."""
    from qzhou.reranking.model import Reranker

    if cfg.model.attention == "bidirectional" or cfg.model.pooling or cfg.model.layers:
        raise ValueError("model.attention / pooling / layers are embedder settings; a reranker keeps causal attention "
                         "and reads the last position (remove them from the recipe)")
    if cfg.lora is not None and not cfg.lora.merge_on_save:
        raise ValueError("lora.merge_on_save: false is not supported for a reranker: Reranker.load and CrossEncoder "
                         "read full model folders, not an adapter alone; remove merge_on_save (default true)")
    r = Reranker.load(source, dtype="float32", device="cpu")
    if cfg.model.gradient_checkpointing:
        activation_checkpointing(r.model)
    if cfg.lora is not None:
        r.model = wrap_lora(r.model, cfg.lora)
        check_output_layer(r, cfg.lora.target_modules)
    return r


def check_output_layer(reranker, target_modules) -> None:
    """`Reranker.forward` reads the yes / no rows of the output layer's weight directly, so a LoRA adapter on that
    layer would train nothing and be silently dropped: refuse it (peft's "all-linear" leaves the output layer out)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(reranker.causal_lm.get_output_embeddings(), BaseTunerLayer):
        raise ValueError(f"lora.target_modules {target_modules!r} puts an adapter on the output layer (lm_head), "
                         "whose yes/no rows the reranker reads directly, so it would be ignored; leave lm_head out "
                         "(the default all-linear does)")


@register
class PointwiseReranker(Objective):
    task = "reranker"
    task_type = "Retrieval"
    record_schema = "retrieval"
    retrieval = True
    roles = (Role("positive", "document", "passage"), Role("negative", "document", "passage"))

    def __init__(self, cfg, model, rng):
        super().__init__(cfg, model, rng)
        self.reranker = model
        overhead = len(model.format_pairs([("q", "d")])[0])
        self.max_length = min(model.max_length, overhead + cfg.query_max_length + cfg.passage_max_length)

    @classmethod
    def build_model(cls, cfg, source: str, first: bool):
        return build_reranker(cfg, source, first)

    @classmethod
    def padding(cls, model) -> tuple[str, int]:
        return "left", model.tokenizer.pad_token_id

    def collate(self, records, instruction, part=None):
        positives, negatives, counts = [], [], []
        for r, positive, picks, chosen in drawn_part(self.rng, records, self.cfg.hard_negatives, instruction, part):
            positives.append(self.reranker.format_pairs([(r["query"], positive)], chosen, max_length=self.max_length)[0])
            negatives += self.reranker.format_pairs([(r["query"], r["neg"][j]) for j in picks], chosen,
                                                    max_length=self.max_length) if picks else []
            counts.append(len(picks))
        return {"positive": positives, "negative": negatives}, {"neg_counts": torch.tensor(counts, dtype=torch.long)}

    def loss(self, embeddings, labels):
        pos, neg = embeddings["positive"], embeddings["negative"]
        logits = torch.cat([pos, neg]) if neg is not None and neg.numel() else pos
        targets = torch.cat([torch.ones(len(pos)), torch.zeros(len(logits) - len(pos))]).long().to(logits.device)
        return pointwise_loss(logits, targets)


@register
class ListwiseReranker(PointwiseReranker):
    task = "reranker-listwise"

    def loss(self, embeddings, labels):
        pos, neg = embeddings["positive"], embeddings["negative"]
        if neg is None or not neg.numel():
            raise ValueError("reranker-listwise needs hard negatives: records with `neg` and hard_negatives >= 1")
        return listwise_loss(pos[:, 1], neg[:, 1], labels["neg_counts"])
