"""The merge methods as pure tensor functions: one tensor name, its N input tensors (any dtype), the result in fp32.

Linear, task arithmetic, slerp (chained pairwise for N > 2) and multislerp all produce a linear combination
Σ cᵢ θᵢ (+ c_base · base) whose coefficients depend only on the Gram matrix Gᵢⱼ = θᵢ·θⱼ (`gram`: float64 over
chunks, so the angle between near-parallel checkpoints is exact), then the output is computed chunk by chunk in
float32. So these methods never hold more than the raw inputs plus one fp32 chunk, and a
streaming driver writes each chunk as it is made. TIES and DARE need a whole task vector at once (top-k trimming,
random masks): they work on full fp32 tensors.

The combination is anchored on the first input, out = (Σcᵢ)·θ₀ + Σ_{i≥1} cᵢ (θᵢ − θ₀): merging N copies of one
checkpoint gives it back bit for bit whenever the coefficients sum to one (linear, slerp fallback, multislerp).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

METHODS = ("linear", "task-arithmetic", "slerp", "multislerp", "ties", "dare-linear", "dare-ties")
BASE_METHODS = ("task-arithmetic", "ties", "dare-linear", "dare-ties")  # relative to --base (task vectors)
CHUNK = 1 << 22  # elements per fp32 output chunk: 16 MiB
GRAM_CHUNK = 1 << 22  # elements per float64 block in `gram`: 32 MiB per input
MERGEKIT_DOT = 0.9995  # mergekit's slerp turns into plain lerp above this cosine; we count it, we do not use it


@dataclass
class MergeSpec:
    """What to merge and how. `weights`: one per input (default equal); `t`: slerp between two inputs (weights
    (1−t, t)); `density`: share of each task vector TIES keeps / DARE keeps; `lam`: task-vector scale;
    `min_angle`: radians below which (or within which of π) slerp interpolates linearly and counts it."""

    method: str
    weights: list[float] | None = None
    t: float | None = None
    density: float = 0.5
    lam: float = 1.0
    seed: int = 0
    min_angle: float = 1e-4

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r} is not known; choose one of {', '.join(METHODS)}")
        if self.t is not None and not 0.0 <= self.t <= 1.0:
            raise ValueError(f"--t must be between 0 and 1 (got {self.t})")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"--density must be in (0, 1] (got {self.density})")
        if self.weights is not None and any(not math.isfinite(w) or w < 0 for w in self.weights):
            raise ValueError(f"--weights must be finite and >= 0 (got {self.weights})")

    def input_weights(self, n: int) -> list[float]:
        """The weight of each of the n inputs, after --t / --weights and their checks."""
        if self.t is not None:
            if n != 2:
                raise ValueError(f"--t interpolates between exactly two inputs (got {n}); use --weights for more")
            if self.weights is not None:
                raise ValueError("give --t or --weights, not both")
            return [1.0 - self.t, self.t]
        if self.weights is None:
            return [1.0] * n if self.method in BASE_METHODS else [1.0 / n] * n
        if len(self.weights) != n:
            raise ValueError(f"--weights has {len(self.weights)} values for {n} inputs; give one per input")
        if sum(self.weights) <= 0:
            raise ValueError("--weights sum to zero; at least one input needs a positive weight")
        return list(self.weights)


@dataclass
class TensorPlan:
    """How one tensor's output is made: coefficients over the inputs (and the base), or a full fp32 result.
    `fallback`: why slerp/multislerp interpolated linearly ('parallel', 'antiparallel', 'zero'), else None."""

    tensors: list[torch.Tensor]
    coefficients: list[float] | None = None
    base: torch.Tensor | None = None
    base_coefficient: float = 0.0
    full: torch.Tensor | None = None
    fallback: str | None = None
    cosines: list[float] = field(default_factory=list)

    def chunks(self, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
        """The flat output, `chunk` elements at a time: fp32, or the inputs' dtype where one fused op computes it
        (two inputs, coefficients summing to one: torch.lerp computes bf16 / fp16 in fp32 and rounds once)."""
        if self.full is not None:
            flat = self.full.reshape(-1)
            for lo in range(0, flat.numel(), chunk):
                yield flat[lo:lo + chunk]
            return
        flats = [x.reshape(-1) for x in self.tensors]
        base = self.base.reshape(-1) if self.base is not None else None
        total = float(sum(self.coefficients) + (self.base_coefficient if base is not None else 0.0))
        pair = (len(flats) == 2 and base is None and total != 0.0 and flats[0].dtype == flats[1].dtype
                and flats[0].is_floating_point())
        for lo in range(0, flats[0].numel(), chunk):
            if pair and total == 1.0:  # one pass in the inputs' dtype (bf16 / fp16 compute in fp32, round once)
                yield torch.lerp(flats[0][lo:lo + chunk], flats[1][lo:lo + chunk], self.coefficients[1])
                continue
            first = flats[0][lo:lo + chunk].float()
            if pair:  # θ₀ + w (θ₁ − θ₀) in fp32, scaled when the coefficients do not sum to one (slerp)
                yield torch.lerp(first, flats[1][lo:lo + chunk].float(), self.coefficients[1] / total).mul_(total)
                continue
            out = first * total
            for c, x in zip(self.coefficients[1:], flats[1:]):
                if c != 0.0:
                    out.add_(x[lo:lo + chunk].float() - first, alpha=c)
            if base is not None and self.base_coefficient != 0.0:
                out.add_(base[lo:lo + chunk].float() - first, alpha=self.base_coefficient)
            yield out

    def result(self) -> torch.Tensor:
        """The whole output in fp32 with the inputs' shape (tests, in-memory merges)."""
        return torch.cat([c.float() for c in self.chunks()]).view(self.tensors[0].shape)


# ------------------------------------------------------------------------------------------------ Gram methods
def gram(tensors: Sequence[torch.Tensor], chunk: int = GRAM_CHUNK) -> torch.Tensor:
    """(N, N) float64 matrix of dot products θᵢ·θⱼ, over chunks: products and sums in float64 (numpy's einsum
    casts as it goes, 3x cheaper than materialising float64 copies). Products of fp32 / bf16 values are exact in
    float64, so 1 − cos between near-parallel checkpoints keeps its digits (fp32 dot products leave noise of ~1e-6
    there, i.e. angles below ~1e-3 rad would be guesses)."""
    import numpy as np

    flats = [x.reshape(-1) for x in tensors]
    n = len(flats)
    g = torch.zeros(n, n, dtype=torch.float64)
    for lo in range(0, flats[0].numel(), chunk):
        rows = [f[lo:lo + chunk].float().numpy() for f in flats]
        for i in range(n):
            for j in range(i, n):
                g[i, j] += float(np.einsum("i,i->", rows[i], rows[j], dtype=np.float64))
    return g + g.triu(1).T


def angle(g: torch.Tensor, i: int, j: int) -> float:
    """The angle between vectors i and j from their Gram matrix, stable near 0 and π: 2·atan2(|uᵢ−uⱼ|, |uᵢ+uⱼ|)."""
    cos = float(g[i, j]) / math.sqrt(float(g[i, i]) * float(g[j, j]))
    cos = min(1.0, max(-1.0, cos))
    return 2.0 * math.atan2(math.sqrt(2.0 - 2.0 * cos), math.sqrt(2.0 + 2.0 * cos))


def slerp_pair(g: torch.Tensor, t: float, min_angle: float) -> tuple[float, float, str | None]:
    """Coefficients (a, b) of θ = a·θ₀ + b·θ₁ = sin((1−t)Ω)/sin Ω·θ₀ + sin(tΩ)/sin Ω·θ₁ for a 2x2 Gram matrix,
    and the fallback taken: linear (1−t, t) for a zero tensor, or an angle within `min_angle` of 0 or π."""
    if float(g[0, 0]) == 0.0 or float(g[1, 1]) == 0.0:
        return 1.0 - t, t, "zero"
    omega = angle(g, 0, 1)
    if omega < min_angle:
        return 1.0 - t, t, "parallel"
    if math.pi - omega < min_angle:
        return 1.0 - t, t, "antiparallel"
    s = math.sin(omega)
    return math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s, None


def chained_slerp(g: torch.Tensor, weights: Sequence[float], min_angle: float) -> tuple[list[float], str | None]:
    """Slerp in input order: the running result r (starting at θ₁) meets θₖ at t = wₖ / (w₁ + ... + wₖ), so with
    equal weights every input ends with an equal share, as a running mean would. Returns coefficients over the
    inputs and the first fallback met."""
    n = len(weights)
    r = torch.zeros(n, dtype=torch.float64)
    r[0] = 1.0
    seen = weights[0]
    fallback = None
    for k in range(1, n):
        seen += weights[k]
        t = weights[k] / seen if seen > 0 else 0.0
        gr = g @ r
        pair = torch.tensor([[float(r @ gr), float(gr[k])], [float(gr[k]), float(g[k, k])]], dtype=torch.float64)
        a, b, why = slerp_pair(pair, t, min_angle)
        fallback = fallback or why
        r = a * r
        r[k] += b
    return r.tolist(), fallback


def multislerp(g: torch.Tensor, weights: Sequence[float], min_angle: float,
               iterations: int = 100, tol: float = 1e-12) -> tuple[list[float], str | None]:
    """Order-free spherical mean: the weighted Karcher mean m of the unit directions (fixed point of
    m ← exp_m(Σ wᵢ log_m uᵢ), started at the normalised weighted mean, which is where mergekit's one-step
    multislerp stops), scaled by the weighted mean norm. For two inputs of equal norm it is slerp at t = w₂/(w₁+w₂).
    Everything stays in the span of the inputs, so it is worked out on coefficients with the Gram matrix."""
    w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    norms = g.diagonal().sqrt()
    if bool((norms == 0).any()):
        return w.tolist(), "zero"
    u = g / torch.outer(norms, norms)  # Gram matrix of the unit directions
    n = len(weights)
    omegas = [angle(g, i, j) for i in range(n) for j in range(i + 1, n)]
    if max(omegas) < min_angle:
        return w.tolist(), "parallel"
    if any(math.pi - o < min_angle for o in omegas):
        return w.tolist(), "antiparallel"
    alpha = w.clone()
    size = float(alpha @ u @ alpha)
    if size < 1e-24:
        return w.tolist(), "antiparallel"
    alpha /= math.sqrt(size)
    eye = torch.eye(n, dtype=torch.float64)
    for _ in range(iterations):
        cos = (u @ alpha).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)
        scale = torch.where(theta > 1e-12, theta / torch.sin(theta), torch.ones_like(theta))
        v = ((w * scale)[:, None] * (eye - cos[:, None] * alpha[None, :])).sum(0)  # tangent vector, coefficients
        step = math.sqrt(max(float(v @ u @ v), 0.0))
        alpha = math.cos(step) * alpha + (math.sin(step) / step if step > 0 else 1.0) * v
        alpha /= math.sqrt(float(alpha @ u @ alpha))
        if step < tol:
            break
    mean_norm = float((w * norms).sum())
    return (mean_norm * alpha / norms).tolist(), None


# ------------------------------------------------------------------------------------------------ TIES / DARE
def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim: keep the ceil(density·n) entries of largest magnitude, zero the rest."""
    k = math.ceil(density * tau.numel())
    if k >= tau.numel():
        return tau
    keep = torch.zeros(tau.numel(), dtype=torch.bool)
    keep[tau.reshape(-1).abs().topk(k, sorted=False).indices] = True
    return tau * keep.view(tau.shape)


def dare(tau: torch.Tensor, density: float, seed: int, name: str, index: int) -> torch.Tensor:
    """DARE: drop each entry with probability 1 − density and rescale the kept ones by 1/density. The generator is
    seeded from (seed, tensor name, input index), so a merge is the same whatever order tensors are visited in."""
    if density >= 1.0:
        return tau
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{index}".encode()))
    keep = torch.rand(tau.shape, generator=gen) < density
    return tau * keep / density


def disjoint_merge(taus: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """TIES elect + disjoint mean: per entry the sign of Σ wᵢτᵢ (0 counts as +), then the weighted mean of the
    entries that are non-zero and agree with it (0 where none does)."""
    stacked = torch.stack(list(taus))
    w = torch.tensor(weights, dtype=torch.float32).view(-1, *([1] * (stacked.dim() - 1)))
    sign = torch.where((w * stacked).sum(0) >= 0, 1.0, -1.0)
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    num = (w * stacked * agree).sum(0)
    den = (w * agree).sum(0)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def task_vector_merge(name: str, tensors: Sequence[torch.Tensor], base: torch.Tensor, spec: MergeSpec,
                      weights: Sequence[float]) -> torch.Tensor:
    """TIES, DARE-linear or DARE-TIES over the task vectors τᵢ = θᵢ − base: base + λ·merged, in fp32."""
    b = base.float()
    taus = [x.float() - b for x in tensors]
    if spec.method == "ties":
        merged = disjoint_merge([trim(t, spec.density) for t in taus], weights)
    else:
        taus = [dare(t, spec.density, spec.seed, name, i) for i, t in enumerate(taus)]
        if spec.method == "dare-ties":
            merged = disjoint_merge(taus, weights)
        else:
            merged = sum(w * t for w, t in zip(weights, taus))
    return b + spec.lam * merged


# ------------------------------------------------------------------------------------------------ one tensor
def plan_tensor(name: str, tensors: Sequence[torch.Tensor], spec: MergeSpec,
                base: torch.Tensor | None = None, chunk: int = CHUNK) -> TensorPlan:
    """How `name` is merged from `tensors` (same shape; any float dtype). Integer / bool buffers are copied from
    the first input. Raises ValueError when the method needs a base and none is given."""
    tensors = list(tensors)
    weights = spec.input_weights(len(tensors))
    if not tensors[0].is_floating_point():
        return TensorPlan(tensors, coefficients=[1.0] + [0.0] * (len(tensors) - 1))
    if spec.method in BASE_METHODS and base is None:
        raise ValueError(f"--method {spec.method} merges task vectors relative to a base model: add --base FOLDER")
    if spec.method == "linear":
        total = sum(weights)
        return TensorPlan(tensors, coefficients=[w / total for w in weights])
    if spec.method == "task-arithmetic":
        coeffs = [spec.lam * w for w in weights]
        return TensorPlan(tensors, coefficients=coeffs, base=base, base_coefficient=1.0 - sum(coeffs))
    if spec.method in ("ties", "dare-linear", "dare-ties"):
        return TensorPlan(tensors, full=task_vector_merge(name, tensors, base, spec, weights))
    g = gram(tensors, min(chunk, GRAM_CHUNK))
    cosines = [float(g[0, j] / math.sqrt(float(g[0, 0] * g[j, j]))) if g[0, 0] * g[j, j] > 0 else 0.0
               for j in range(1, len(tensors))]
    if len(tensors) == 1:
        return TensorPlan(tensors, coefficients=[1.0], cosines=cosines)
    if spec.method == "slerp":
        coeffs, why = chained_slerp(g, weights, spec.min_angle)
    else:
        coeffs, why = multislerp(g, weights, spec.min_angle)
    return TensorPlan(tensors, coefficients=coeffs, fallback=why, cosines=cosines)


def merge_tensor(name: str, tensors: Sequence[torch.Tensor], spec: MergeSpec,
                 base: torch.Tensor | None = None) -> torch.Tensor:
    """One merged tensor in the first input's dtype (the in-memory path; the driver streams `plan_tensor`)."""
    return plan_tensor(name, tensors, spec, base).result().to(tensors[0].dtype)
