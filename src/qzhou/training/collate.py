"""Records of one dataset -> tokenized groups + the labels its loss needs.

Instructions follow QZhou's training format: retrieval puts the instruction on queries only (documents raw);
STS and classification are symmetric and put it on every text. Queries are cut at query_max_length, documents
at passage_max_length.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import torch

from qzhou.config import EmbedderConfig


def text_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=7).digest(), "little")


def pick_instruction(record: dict[str, Any], instruction: str | list[str] | None) -> str | None:
    """The record's own instruction, else the dataset's. A list of instructions (paraphrases of one task) gives each
    record one of them, chosen by a hash of its first text: the same choice on every process, in every epoch and
    after a resume, with no random state. Training on several wordings keeps the model from keying on one string,
    so an evaluation instruction it never saw still reads as that task."""
    chosen = record.get("instruction", instruction)
    if isinstance(chosen, list):
        first = record.get("query", record.get("text1", ""))
        return chosen[text_key(first) % len(chosen)]
    return chosen


def merge_groups(groups: list[dict[str, torch.Tensor]], padding_side: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Tokenized groups -> one batch (rows in group order), each padded on `padding_side` to the widest group: one
    forward instead of one per group (what sentence-transformers 6 does for a loss's candidate columns). Fewer,
    larger matrix products run faster on CPUs and GPUs alike; the embeddings are those of separate forwards."""
    width = max(g["input_ids"].shape[1] for g in groups)
    out: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": []}
    for g in groups:
        extra = width - g["input_ids"].shape[1]
        pad = (extra, 0) if padding_side == "left" else (0, extra)
        out["input_ids"].append(torch.nn.functional.pad(g["input_ids"], pad, value=pad_id))
        out["attention_mask"].append(torch.nn.functional.pad(g["attention_mask"], pad, value=0))
    return {k: torch.cat(v) for k, v in out.items()}


def merge_pays(groups: list[dict[str, torch.Tensor]], slack: float = 0.1) -> bool:
    """True when one forward over all groups computes at most `slack` more (padded) tokens than one per group: then
    the saved forward wins. QZhou's long passages keep their queries apart; sentence pairs (NLI, STS) merge."""
    shapes = [g["input_ids"].shape for g in groups if g["input_ids"].shape[0]]
    separate = sum(rows * width for rows, width in shapes)
    return sum(rows for rows, _ in shapes) * max(width for _, width in shapes) <= (1 + slack) * separate


def length_runs(lengths: list[int], most: int, overhead: int = 0) -> list[list[int]]:
    """Row indices cut into at most `most` runs of like length, for one forward each: rows sorted by length (ties
    by index), cut where the total computed tokens — each run's rows × its longest row, plus `overhead` tokens per
    forward — is least (exact dynamic program over the distinct lengths)."""
    if most <= 1 or len(set(lengths)) <= 1:  # one forward: the rows stay in their order
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    tally = Counter(lengths)
    values = sorted(tally)
    count = [tally[v] for v in values]
    m = len(values)
    prefix = [0]
    for c in count:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][j]: least cost of the rows with the j smallest distinct lengths in k runs; cut[k][j]: the last run's start
    best = [[inf] * (m + 1) for _ in range(most + 1)]
    cut = [[0] * (m + 1) for _ in range(most + 1)]
    best[0][0] = 0
    for k in range(1, most + 1):
        for j in range(1, m + 1):
            for i in range(j):
                cost = best[k - 1][i] + (prefix[j] - prefix[i]) * values[j - 1] + overhead
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, most + 1), key=lambda k: (best[k][m], k))
    if k == 1:
        return [list(range(len(lengths)))]
    runs, j = [], m
    while k > 0:
        i = cut[k][j]
        runs.append(order[prefix[i]:prefix[j]])
        j, k = i, k - 1
    return runs[::-1]


def embed_in_runs(forward, batch: dict[str, torch.Tensor], padding_side: str, most: int,
                  overhead: int = 0) -> torch.Tensor:
    """`forward(batch) -> (rows, D)` run once per run of like-length rows (`length_runs`), each cut to its longest
    row (padding columns dropped on `padding_side`), then put back in row order: the embeddings of one forward over
    the whole batch, at the cost of the real lengths rather than the widest row. Rotary positions are relative, so
    dropping left padding changes nothing; right padding keeps absolute positions too."""
    mask = batch["attention_mask"]
    lengths = mask.sum(1).tolist()
    width = mask.shape[1]
    runs = length_runs(lengths, most, overhead)
    outs, order = [], []
    for run in runs:
        rows = slice(None) if len(runs) == 1 else torch.tensor(run)  # one run: every row, in order (no copy)
        keep = max([1, *(lengths[i] for i in run)])
        cols = slice(width - keep, width) if padding_side == "left" else slice(0, keep)
        outs.append(forward({"input_ids": batch["input_ids"][rows][:, cols], "attention_mask": mask[rows][:, cols]}))
        order.extend(run)
    if len(runs) == 1:
        return outs[0]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(outs)[inverse.to(outs[0].device)]


class Collator:
    def __init__(self, tokenizer, config: EmbedderConfig, query_max_length: int, passage_max_length: int,
                 hard_negatives: int, seed: int = 0):
        self.tok, self.cfg = tokenizer, config
        self.qlen, self.plen = query_max_length, passage_max_length
        self.k = hard_negatives
        self.rng = random.Random(seed)

    def _fmt(self, text: str, instruction: str | None) -> str:
        return self.cfg.format_query(text, instruction) if instruction else text

    def _tok(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        t = self.tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}

    def __call__(self, task: str, records: list[dict[str, Any]], instruction: str | list[str] | None,
                 part: slice | None = None):
        """-> (groups, aux): groups are tokenized batches in loss-argument order; aux holds label tensors.

        `part`: the rows of `records` this process embeds (data parallelism). Random choices (which positive,
        which negatives) are drawn for every record in the same order whatever `part` is, so the processes
        together build exactly the batch one process would; retrieval and classification always give three
        groups (the negatives group may be empty for a process when others have negatives).
        """
        part = part or slice(None)
        ins = [pick_instruction(r, instruction) for r in records]
        if task == "sts":
            mine = list(zip(records, ins))[part]
            a = [self._fmt(r["text1"], i) for r, i in mine]
            b = [self._fmt(r["text2"], i) for r, i in mine]
            scores = torch.tensor([float(r["score"]) for r, _ in mine])
            return [self._tok(a, self.plen), self._tok(b, self.plen)], {"scores": scores}
        symmetric = task == "classification"
        drawn = []  # (positive, [negative indices]) per record, for all records
        for r in records:
            positive = self.rng.choice(r["pos"])
            picks = list(range(len(r.get("neg", []))))
            self.rng.shuffle(picks)
            drawn.append((positive, picks[:self.k]))
        queries, pos, neg, neg_labels = [], [], [], []
        for r, i, (positive, picks) in list(zip(records, ins, drawn))[part]:
            queries.append(self._fmt(r["query"], i))
            pos.append(self._fmt(positive, i if symmetric else None))
            for j in picks:
                neg.append(self._fmt(r["neg"][j], i if symmetric else None))
                if symmetric:
                    neg_labels.append(r["neg_labels"][j])
        groups = [self._tok(queries, self.qlen), self._tok(pos, self.plen)]
        empty = {"input_ids": torch.zeros(0, 1, dtype=torch.long), "attention_mask": torch.zeros(0, 1, dtype=torch.long)}
        groups.append(self._tok(neg, self.plen) if neg else empty)
        if symmetric:
            return groups, {"labels": torch.tensor([r["label"] for r in records[part]]),
                            "neg_labels": torch.tensor(neg_labels, dtype=torch.long)}
        return groups, {"pos_keys": torch.tensor([text_key(t) for t in pos]),
                        "neg_keys": torch.tensor([text_key(t) for t in neg], dtype=torch.long)}
