"""The merge methods against brute-force formulas on small tensors (numpy float64 references written here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qzhou.merging.methods import MergeSpec, angle, dare, gram, merge_tensor, plan_tensor


def ref_slerp(a, b, t):
    """The issue's formula, literally: sin((1−t)Ω)/sin Ω·θ₀ + sin(tΩ)/sin Ω·θ₁, Ω the angle between θ₀ and θ₁."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    omega = math.acos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def np64(x):
    return x.double().numpy().ravel()


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_matches_formula(t):
    a, b = rand(6, 5, seed=1), rand(6, 5, seed=2)
    plan = plan_tensor("w", [a, b], MergeSpec("slerp", t=t))
    assert plan.fallback is None
    np.testing.assert_allclose(np64(plan.result()), ref_slerp(a, b, t), rtol=1e-5, atol=1e-6)
    if t == 0.0:
        assert torch.equal(merge_tensor("w", [a, b], MergeSpec("slerp", t=t)), a)
    if t == 1.0:
        torch.testing.assert_close(merge_tensor("w", [a, b], MergeSpec("slerp", t=t)), b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["slerp", "multislerp"])
@pytest.mark.parametrize("other, kind", [(lambda a: 2.5 * a, "parallel"), (lambda a: -a, "antiparallel"),
                                         (lambda a: torch.zeros_like(a), "zero")])
def test_slerp_falls_back_to_linear_and_says_why(other, kind, method):
    a = rand(4, 3)
    b = other(a)
    plan = plan_tensor("w", [a, b], MergeSpec(method, weights=[0.7, 0.3]))
    assert plan.fallback == kind
    np.testing.assert_allclose(np64(plan.result()), 0.7 * np64(a) + 0.3 * np64(b), rtol=1e-6, atol=1e-7)


def test_near_parallel_is_slerped_not_averaged():
    """cos > 0.9995 (where mergekit averages) still slerps: the angle comes from a float64 Gram matrix."""
    a = rand(4096)
    b = a + 2e-3 * rand(4096, seed=5)
    g = gram([a, b])
    ref = math.acos(np.clip(np64(a) @ np64(b) / (np.linalg.norm(np64(a)) * np.linalg.norm(np64(b))), -1, 1))
    assert angle(g, 0, 1) == pytest.approx(ref, rel=1e-6)
    assert float(g[0, 1] / (g[0, 0] * g[1, 1]).sqrt()) > 0.9995
    plan = plan_tensor("w", [a, b], MergeSpec("slerp"))
    assert plan.fallback is None
    np.testing.assert_allclose(np64(plan.result()), ref_slerp(a, b, 0.5), rtol=1e-5, atol=1e-6)


def test_chained_slerp_order_and_shares():
    a, b, c = rand(10, seed=1), rand(10, seed=2), rand(10, seed=3)
    out = merge_tensor("w", [a, b, c], MergeSpec("slerp"))
    ref = ref_slerp(ref_slerp(a, b, 1 / 2), c, 1 / 3)  # the stated order: running result meets input k at 1/k
    np.testing.assert_allclose(np64(out), ref, rtol=1e-5, atol=1e-6)
    weighted = merge_tensor("w", [a, b, c], MergeSpec("slerp", weights=[1, 2, 1]))
    np.testing.assert_allclose(np64(weighted), ref_slerp(ref_slerp(a, b, 2 / 3), c, 1 / 4), rtol=1e-5, atol=1e-6)


def test_multislerp_two_inputs_is_slerp_and_order_free():
    a, b = rand(8, seed=1), rand(8, seed=2)
    b = b * (a.norm() / b.norm())  # equal norms: the spherical mean scaled by the mean norm is slerp itself
    out = merge_tensor("w", [a, b], MergeSpec("multislerp", weights=[0.7, 0.3]))
    np.testing.assert_allclose(np64(out), ref_slerp(a, b, 0.3), rtol=1e-5, atol=1e-6)
    c = rand(8, seed=3)
    one = merge_tensor("w", [a, b, c], MergeSpec("multislerp", weights=[1, 2, 3]))
    two = merge_tensor("w", [c, a, b], MergeSpec("multislerp", weights=[3, 1, 2]))
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)


def test_multislerp_is_the_weighted_spherical_mean():
    """Brute-force check of the definition: at the result's direction m, Σ wᵢ log_m(uᵢ) = 0, and the norm is the
    weighted mean of the input norms."""
    xs = [rand(12, seed=s) + 1.5 for s in range(4)]  # all in one hemisphere
    w = np.array([0.1, 0.2, 0.3, 0.4])
    out = np64(merge_tensor("w", xs, MergeSpec("multislerp", weights=w.tolist())))
    m = out / np.linalg.norm(out)
    tangent = np.zeros(12)
    for wi, x in zip(w, xs):
        u = np64(x) / np.linalg.norm(np64(x))
        th = math.acos(np.clip(u @ m, -1, 1))
        tangent += wi * th / math.sin(th) * (u - math.cos(th) * m)
    assert np.linalg.norm(tangent) < 1e-5
    assert np.linalg.norm(out) == pytest.approx(sum(wi * np.linalg.norm(np64(x)) for wi, x in zip(w, xs)), rel=1e-5)


def test_linear_and_task_arithmetic():
    xs, base = [rand(3, 4, seed=s) for s in range(3)], rand(3, 4, seed=9)
    w = [0.2, 0.3, 0.5]
    out = merge_tensor("w", xs, MergeSpec("linear", weights=[2, 3, 5]))  # weights are normalised
    np.testing.assert_allclose(np64(out), sum(wi * np64(x) for wi, x in zip(w, xs)), rtol=1e-6, atol=1e-6)
    ta = merge_tensor("w", xs, MergeSpec("task-arithmetic", weights=w, lam=0.8), base=base)
    ref = np64(base) + 0.8 * sum(wi * (np64(x) - np64(base)) for wi, x in zip(w, xs))
    np.testing.assert_allclose(np64(ta), ref, rtol=1e-5, atol=1e-6)


def ref_ties(xs, base, w, density, lam):
    """TIES by loops: trim each task vector to its ceil(density·n) largest magnitudes, elect the sign of the
    weighted sum per entry, average (weighted) the entries that agree."""
    taus = [np64(x) - np64(base) for x in xs]
    n = taus[0].size
    k = math.ceil(density * n)
    trimmed = []
    for tau in taus:
        keep = set(sorted(range(n), key=lambda j: -abs(tau[j]))[:k])
        trimmed.append(np.array([tau[j] if j in keep else 0.0 for j in range(n)]))
    out = np64(base).copy()
    for j in range(n):
        total = sum(wi * tr[j] for wi, tr in zip(w, trimmed))
        sign = 1.0 if total >= 0 else -1.0
        num = den = 0.0
        for wi, tr in zip(w, trimmed):
            if tr[j] != 0 and np.sign(tr[j]) == sign:
                num, den = num + wi * tr[j], den + wi
        out[j] += lam * (num / den if den else 0.0)
    return out


def test_ties_matches_loops():
    xs, base = [rand(5, 6, seed=s) for s in range(3)], rand(5, 6, seed=7)
    out = merge_tensor("w", xs, MergeSpec("ties", weights=[1, 2, 1], density=0.4, lam=0.9), base=base)
    np.testing.assert_allclose(np64(out), ref_ties(xs, base, [1, 2, 1], 0.4, 0.9), rtol=1e-5, atol=1e-6)


def test_dare_drops_with_seed_and_rescales():
    tau = rand(200_000) + 3.0  # no exact zeros
    kept = dare(tau, 0.3, seed=1, name="w", index=0)
    same = dare(tau, 0.3, seed=1, name="w", index=0)
    assert torch.equal(kept, same)
    assert not torch.equal(kept, dare(tau, 0.3, seed=2, name="w", index=0))
    on = kept != 0
    assert on.float().mean().item() == pytest.approx(0.3, abs=0.005)
    torch.testing.assert_close(kept[on], tau[on] / 0.3)


def test_dare_linear_and_dare_ties_formulas():
    xs, base = [rand(40, seed=s) for s in range(3)], rand(40, seed=7)
    spec = MergeSpec("dare-linear", weights=[1, 1, 1], density=0.5, seed=3)
    taus = [dare(x - base, 0.5, 3, "w", i) for i, x in enumerate(xs)]
    out = merge_tensor("w", xs, spec, base=base)
    np.testing.assert_allclose(np64(out), np64(base) + sum(np64(t) for t in taus), rtol=1e-5, atol=1e-5)
    ties = merge_tensor("w", xs, MergeSpec("dare-ties", weights=[1, 1, 1], density=0.5, seed=3), base=base)
    ref = ref_ties([t + base for t in taus], base, [1, 1, 1], 1.0, 1.0)  # DARE replaces the trim
    np.testing.assert_allclose(np64(ties), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", [MergeSpec("linear"), MergeSpec("slerp"), MergeSpec("multislerp"),
                                  MergeSpec("slerp", weights=[1, 2, 3]), MergeSpec("task-arithmetic", weights=[1 / 3] * 3),
                                  MergeSpec("ties", density=1.0), MergeSpec("dare-ties", density=1.0)],
                         ids=lambda s: s.method)
def test_copies_of_one_checkpoint_come_back_unchanged(spec, dtype):
    x, base = rand(7, 9).to(dtype), rand(7, 9, seed=4).to(dtype)
    out = merge_tensor("w", [x, x.clone(), x.clone()], spec, base=base if spec.method in
                       ("task-arithmetic", "ties", "dare-ties") else None)
    assert out.dtype == dtype
    if spec.method in ("task-arithmetic", "ties", "dare-ties"):  # base + (x − base) in fp32: one rounding
        torch.testing.assert_close(out, x)
    else:
        assert torch.equal(out, x)


def test_integer_buffers_are_copied_and_chunks_match_whole():
    ids = torch.arange(10)
    assert torch.equal(merge_tensor("pos", [ids, ids + 5], MergeSpec("slerp")), ids)
    a, b = rand(1000, seed=1), rand(1000, seed=2)
    whole = plan_tensor("w", [a, b], MergeSpec("slerp", t=0.4)).result()
    chunked = torch.cat(list(plan_tensor("w", [a, b], MergeSpec("slerp", t=0.4), chunk=7).chunks(chunk=7)))
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)


def test_bad_parameters_name_the_flag():
    with pytest.raises(ValueError, match="--method 'soup'"):
        MergeSpec("soup")
    with pytest.raises(ValueError, match="--t"):
        MergeSpec("slerp", t=1.5)
    with pytest.raises(ValueError, match="exactly two"):
        MergeSpec("slerp", t=0.5).input_weights(3)
    with pytest.raises(ValueError, match="one per input"):
        MergeSpec("linear", weights=[1, 2]).input_weights(3)
    with pytest.raises(ValueError, match="--base"):
        plan_tensor("w", [rand(3), rand(3)], MergeSpec("ties"))
