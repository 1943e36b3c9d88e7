"""CoSENT for STS / NLI pairs (QZhou stage 2; Su Jianlin's CoSENT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosent(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    r"""L = log(1 + Σ_{label(i) > label(j)} e^{(s_j − s_i)/τ}),  sᵢ = cos(aᵢ, bᵢ)

    a, b: (B, D) the two texts of each pair; labels: (B,) gold scores (any range, only their order matters).
    τ = 0.05 is the classic scale 20; QZhou states 0.02 for all losses — a tunable.
    """
    s = F.cosine_similarity(a, b, dim=-1) / tau  # (B,)
    diff = s.unsqueeze(0) - s.unsqueeze(1)  # (B, B): [i, j] = s_j − s_i
    ordered = labels.unsqueeze(1) > labels.unsqueeze(0)  # (B, B): label_i > label_j
    diff = diff.masked_fill(~ordered, float("-inf")).flatten()
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)
