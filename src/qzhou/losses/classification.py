"""QZhou's classification InfoNCE with same-class masking (SYSTEMS.md §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_masked_infonce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor,
                         neg_labels: torch.Tensor, tau: float = 0.02) -> torch.Tensor:
    r"""L = −(1/B) Σᵢ log( e^{s(tᵢ,tᵢ⁺)/τ} / Zᵢ ),

        Zᵢ = e^{s(tᵢ,tᵢ⁺)/τ} + Σₙ M(tᵢ,t⁻ᵢₙ) e^{s(tᵢ,t⁻ᵢₙ)/τ} + Σ_{j≠i} M(tᵢ,tⱼ) e^{s(tᵢ,tⱼ)/τ}
             + Σ_{j≠i,n} M(tᵢ,t⁻ⱼₙ) e^{s(tᵢ,t⁻ⱼₙ)/τ},      M(a, b) = 0 if class(a) = class(b) else 1.

    anchor, pos: (B, D); neg: (B·N, D) row-major by anchor (rows i·N … i·N+N−1 are tᵢ's negatives);
    labels: (B,) class ids; neg_labels: (B·N,) class ids of the negatives.
    """
    t, p, n = (F.normalize(x, dim=-1) for x in (anchor, pos, neg))
    B = t.shape[0]
    s_pos = (t * p).sum(-1, keepdim=True) / tau  # (B, 1)
    s_tt = t @ t.T / tau  # (B, B)
    s_tn = t @ n.T / tau  # (B, B·N): own and other anchors' negatives alike
    same_tt = (labels.unsqueeze(1) == labels.unsqueeze(0)) | torch.eye(B, dtype=torch.bool, device=t.device)
    same_tn = labels.unsqueeze(1) == neg_labels.unsqueeze(0)  # (B, B·N)
    logits = torch.cat([s_pos, s_tt.masked_fill(same_tt, float("-inf")), s_tn.masked_fill(same_tn, float("-inf"))], 1)
    return (torch.logsumexp(logits, dim=1) - s_pos.squeeze(1)).mean()
