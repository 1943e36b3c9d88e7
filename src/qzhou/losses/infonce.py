"""Retrieval InfoNCE losses of QZhou-Embedding and Qwen3-Embedding (SYSTEMS.md §3.1, §3.4).

Shapes: q (B, D) queries, pos (B, D) their positives, neg (M, D) hard negatives of the whole batch (M = B·K, or
0 rows). Similarity is cosine (inputs are L2-normalised here, so a no-op for qzhou embeddings). With gathered
negatives, pass the gathered (global) tensors: the loss is then the global-batch loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _docs(pos: torch.Tensor, neg: torch.Tensor | None) -> torch.Tensor:
    return pos if neg is None or neg.numel() == 0 else torch.cat([pos, neg])  # (B + M, D)


def qzhou_infonce(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None = None, tau: float = 0.02) -> torch.Tensor:
    r"""QZhou retrieval InfoNCE with query–query negatives, no false-negative mask:

        L = −(1/B) Σᵢ log( e^{s(qᵢ,dᵢ⁺)/τ} / ( e^{s(qᵢ,dᵢ⁺)/τ} + Σ_{d ∈ D∖dᵢ⁺} e^{s(qᵢ,d)/τ} + Σ_{j≠i} e^{s(qᵢ,qⱼ)/τ} ) )

    D = every positive and hard negative in the batch. τ = 0.02 (QZhou).
    """
    q, docs = F.normalize(q, dim=-1), F.normalize(_docs(pos, neg), dim=-1)
    B = q.shape[0]
    s_qd = q @ docs.T / tau  # (B, B + M); column i is qᵢ's positive
    s_qq = (q @ q.T / tau).masked_fill(torch.eye(B, dtype=torch.bool, device=q.device), float("-inf"))  # (B, B)
    logits = torch.cat([s_qd, s_qq], dim=1)  # (B, 2B + M)
    return F.cross_entropy(logits, torch.arange(B, device=q.device))


def qwen3_infonce(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None = None, tau: float = 0.02,
                  margin: float = 0.1, doc_keys: torch.Tensor | None = None) -> torch.Tensor:
    r"""Qwen3-Embedding's InfoNCE (technical report eq. 1): QZhou's terms plus dᵢ⁺–d terms, with a false-negative
    mask on every negative:

        Zᵢ = e^{s(qᵢ,dᵢ⁺)/τ} + Σ_{d ∈ D∖dᵢ⁺} mᵢ(d) e^{s(qᵢ,d)/τ} + Σ_{j≠i} mᵢ(qⱼ) e^{s(qᵢ,qⱼ)/τ}
             + Σ_{d ∈ D∖dᵢ⁺} mᵢ(d) e^{s(dᵢ⁺,d)/τ}
        L  = −(1/B) Σᵢ log( e^{s(qᵢ,dᵢ⁺)/τ} / Zᵢ )

    mᵢ(x) = 0 when the negative's score exceeds s(qᵢ,dᵢ⁺) + margin (margin 0.1), or when the negative document's
    text equals dᵢ⁺ (`doc_keys`: (B + M,) integer ids of the documents' texts, positives first); else 1.
    """
    q, docs = F.normalize(q, dim=-1), F.normalize(_docs(pos, neg), dim=-1)
    B, N = q.shape[0], docs.shape[0]
    eye_qd = torch.zeros(B, N, dtype=torch.bool, device=q.device)
    eye_qd[:, :B] = torch.eye(B, dtype=torch.bool, device=q.device)  # (B, N) own positive
    s_qd = q @ docs.T  # (B, N)
    s_qq = q @ q.T  # (B, B)
    s_pd = docs[:B] @ docs.T  # (B, N): dᵢ⁺ against every document
    s_pos = s_qd.diagonal().unsqueeze(1)  # (B, 1)
    with torch.no_grad():
        limit = s_pos + margin
        same_text = torch.zeros(B, N, dtype=torch.bool, device=q.device)
        if doc_keys is not None:
            same_text = doc_keys[:B].unsqueeze(1) == doc_keys.unsqueeze(0)  # (B, N)
        drop_qd = (s_qd > limit) | same_text | eye_qd
        drop_qq = (s_qq > limit) | torch.eye(B, dtype=torch.bool, device=q.device)
        drop_pd = (s_pd > limit) | same_text | eye_qd
    ninf = float("-inf")
    terms = torch.cat([
        (s_pos / tau),  # (B, 1) the positive
        (s_qd / tau).masked_fill(drop_qd, ninf),
        (s_qq / tau).masked_fill(drop_qq, ninf),
        (s_pd / tau).masked_fill(drop_pd, ninf),
    ], dim=1)  # (B, 1 + N + B + N)
    return (torch.logsumexp(terms, dim=1) - s_pos.squeeze(1) / tau).mean()
