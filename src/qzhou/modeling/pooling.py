"""Pooling token states into one vector, written against the attention mask so that left and right padding
give the same result, then Matryoshka truncation and L2 normalisation (in that order: truncate, then normalise,
as Qwen3-Embedding does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, L, D) token states and (B, L) 0/1 mask -> (B, D) in float32.

    mean: average over real tokens (instruction tokens included, as QZhou does);
    last: the last real token (Qwen3-Embedding / gte-Qwen2 read the appended <|endoftext|> there);
    cls:  the first real token.
    """
    mask = mask.to(hidden.device)
    positions = torch.arange(mask.shape[1], device=mask.device)  # (L,)
    if mode == "mean":
        m = mask.unsqueeze(-1).to(torch.float32)  # (B, L, 1)
        return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
    if mode == "last":
        idx = (mask.long() * positions).argmax(1)  # (B,) position of the last 1
    elif mode == "cls":
        idx = (mask.long() * (mask.shape[1] - positions)).argmax(1)  # (B,) position of the first 1
    else:
        raise ValueError(f"pooling must be 'mean', 'last' or 'cls' (got {mode!r})")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx].float()  # (B, D)


def finalize(emb: torch.Tensor, dim: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Matryoshka: keep the first `dim` dimensions, then L2-normalise (if `normalize`)."""
    if dim is not None:
        if dim < 1 or dim > emb.shape[-1]:
            raise ValueError(f"dim must be between 1 and the hidden size {emb.shape[-1]} (got {dim})")
        emb = emb[..., :dim]
    return F.normalize(emb, p=2, dim=-1) if normalize else emb
