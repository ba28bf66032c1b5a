"""NMTune terms against independent numpy computations (docs/design.md §3.1)."""

import numpy as np
import pytest
import torch

from nmtune.objective import (
    AUTHOR_WEIGHTS,
    REGULARISERS,
    TERMS,
    consistency_mse,
    covariance_penalty,
    loss_coefficients,
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


def test_two_stacked_views_pull_the_last_rows_towards_f():
    # z holds view a then view b: mse compares view b with f; cov and svd use all 2N rows.
    rng = np.random.default_rng(3)
    z, f = rng.normal(size=(24, 5)), rng.normal(size=(12, 5))
    got = nmtune_terms(torch.tensor(z), torch.tensor(f), top_k=3)
    _, cov, svd = _np_terms(z, np.vstack([f, f]), 3)
    mse = _np_terms(z[12:], f, 3)[0]
    for g, w in zip(got, (mse, cov, svd), strict=True):
        assert float(g) == pytest.approx(w, rel=1e-6)


def test_a_term_weighted_zero_is_logged_without_a_graph():
    z = torch.randn(16, 4, requires_grad=True)
    terms = nmtune_terms(z, torch.randn(16, 4), weights=(0.0, 0.04, 0.0))
    assert [t.requires_grad for t in terms] == [False, True, False]
    assert all(t.requires_grad for t in nmtune_terms(z, torch.randn(16, 4)))


def test_terms_weighted_zero_can_be_skipped():
    z, f = torch.randn(16, 4), torch.randn(16, 4)
    skipped = nmtune_terms(z, f, weights=(0.0, 0.04, 0.0), unweighted=False)
    assert np.isnan(float(skipped[0])) and np.isnan(float(skipped[2]))
    assert float(skipped[1]) == pytest.approx(float(covariance_penalty(z)), rel=1e-6)


def test_one_table_names_orders_and_signs_the_terms():
    assert TERMS == ("ce", "mse", "cov", "svd")
    assert AUTHOR_WEIGHTS == {"mse": 1.0, "cov": 0.04, "svd": 0.001}
    # L = ce + w_mse·mse + w_cov·cov − w_svd·svd: svd is maximised.
    assert loss_coefficients((2.0, 0.5, 0.25)) == [1.0, 2.0, 0.5, -0.25]
    assert loss_coefficients([w.author_weight for w in REGULARISERS]) == [1.0, 1.0, 0.04, -0.001]
