"""NMTune terms against independent numpy computations (docs/design.md §3.1)."""

import numpy as np
import pytest
import torch

from nmtune.objective import (
    consistency_mse,
    covariance_penalty,
    nmtune_terms,
    top_singular_ratio,
)


def _np_terms(z, f, k):
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    mse = np.mean((zn - fn) ** 2)
    c = np.cov(z, rowvar=False)  # (N-1)-normalised, centred per feature
    cov = (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / z.shape[1]
    s = np.linalg.svd(z, compute_uv=False)
    svd = np.mean(np.sort(s / s.sum())[::-1][:k])
    return mse, cov, svd


@pytest.mark.parametrize("n,d,k", [(64, 16, 5), (10, 40, 5), (128, 8, 3), (7, 3, 5)])
def test_terms_match_numpy(n, d, k):
    rng = np.random.default_rng(n * d)
    z = rng.normal(size=(n, d)) * rng.uniform(0.1, 3, size=d) + 0.5
    f = rng.normal(size=(n, d))
    got = nmtune_terms(torch.tensor(z), torch.tensor(f), top_k=k)
    want = _np_terms(z, f, k)
    for g, w in zip(got, want, strict=True):
        assert float(g) == pytest.approx(w, rel=1e-5)


def test_consistency_target_is_detached():
    z = torch.randn(8, 4, requires_grad=True)
    f = torch.randn(8, 4, requires_grad=True)
    consistency_mse(z, f).backward()
    assert z.grad is not None and f.grad is None


def test_covariance_zero_for_decorrelated_features():
    # Orthogonal centred columns have a diagonal covariance: the penalty vanishes.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(50, 6)))
    q -= q.mean(axis=0)
    q, _ = np.linalg.qr(q)
    assert float(covariance_penalty(torch.tensor(q))) < 1e-3


def test_svd_term_is_uncentred_and_maximal_for_rank_one():
    z = torch.ones(20, 5)  # rank one: all mass on σ1; centring would give zero matrix
    assert float(top_singular_ratio(z, top_k=1)) == pytest.approx(1.0)


def test_terms_reject_misaligned_inputs():
    with pytest.raises(ValueError, match="row-aligned"):
        nmtune_terms(torch.randn(4, 3), torch.randn(5, 3))
