"""Spectrum metrics (docs/design.md §3.2) against numpy's SVD and hand computation."""

import math

import numpy as np
import pytest
import torch

from nmtune import spectrum
from nmtune._validation import NMTuneError


def _reference(X, normalize=True, center=True):
    """Singular values by ``np.linalg.svd`` of the explicitly prepared float64 matrix."""
    Z = np.asarray(X, dtype=np.float64).copy()
    if normalize:
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    if center:
        Z -= Z.mean(axis=0)
    return np.linalg.svd(Z, compute_uv=False)


def _features(n, d, seed=0, offset=2.0):
    """Correlated features with a common offset, like post-ReLU embeddings."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / math.sqrt(d) + offset


def _assert_close(got, want, rel=1e-6):
    assert got.shape == want.shape
    assert np.all(np.diff(got) <= 0) and got.min() >= 0
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * want[0])
    big = want > 1e-6 * want[0]  # values centring pushed to ~0 have no relative precision
    np.testing.assert_allclose(got[big], want[big], rtol=rel)


@pytest.mark.parametrize("n,d", [(400, 24), (30, 50), (40, 40), (1, 5), (6, 1)])
@pytest.mark.parametrize("batch_size", [None, 7, 1000])
@pytest.mark.parametrize("normalize,center", [(True, True), (False, True), (True, False),
                                              (False, False)])
def test_matches_numpy_svd(n, d, batch_size, normalize, center):
    X = _features(n, d, seed=n + d)
    got = spectrum.singular_values(X, normalize, center, batch_size)
    _assert_close(got, _reference(X, normalize, center))


def test_float32_and_torch_inputs():
    X = _features(300, 16).astype(np.float32)
    want = _reference(X)
    _assert_close(spectrum.singular_values(X, batch_size=64), want)
    _assert_close(spectrum.singular_values(torch.from_numpy(X), batch_size=64), want)
    _assert_close(spectrum.singular_values(torch.from_numpy(X[:10])), _reference(X[:10]))


def test_input_is_not_modified():
    X = _features(50, 8)
    before = X.copy()
    spectrum.singular_values(X, batch_size=9)
    spectrum.singular_values(X[:5])
    np.testing.assert_array_equal(X, before)


def test_large_mean_does_not_cancel():
    # Raw features far from the origin: a naive XᵀX − NμμᵀX loses ~1e-4 relative here.
    X = _features(2000, 8, offset=1e6)
    got = spectrum.singular_values(X, normalize=False, batch_size=300)
    _assert_close(got, _reference(X, normalize=False))


def test_zero_rows_stay_zero_when_normalising():
    X = _features(60, 6)
    X[::7] = 0.0
    got = spectrum.singular_values(X, batch_size=11)
    Z = X.copy()
    nz = np.any(X != 0, axis=1)
    Z[nz] /= np.linalg.norm(Z[nz], axis=1, keepdims=True)
    _assert_close(got, _reference(Z, normalize=False))


def test_from_batches_matches_whole_matrix():
    X = _features(500, 12)
    batches = (X[i : i + 33] for i in range(0, 500, 33))
    _assert_close(spectrum.singular_values_from_batches(batches), _reference(X))
    # N < D through the Gram route: min(N, D) values, the large ones still exact.
    small = _features(8, 12)
    got = spectrum.singular_values_from_batches([small[:3], small[3:]])
    want = _reference(small)
    assert got.shape == (8,)
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-6)


def test_from_batches_validation():
    with pytest.raises(NMTuneError, match="no feature batches"):
        spectrum.singular_values_from_batches([])
    with pytest.raises(NMTuneError, match="disagree on D"):
        spectrum.singular_values_from_batches([np.ones((3, 4)), np.ones((3, 5))])
    with pytest.raises(NMTuneError, match="NaN"):
        spectrum.singular_values_from_batches([np.ones((3, 4)), np.full((3, 4), np.nan)])


@pytest.mark.parametrize(
    "X,match",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        (np.ones(5), "2-D"),
        (np.ones((2, 3, 4)), "2-D"),
        (np.ones((0, 4)), "empty"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_features_raise(X, match):
    with pytest.raises(NMTuneError, match=match):
        spectrum.singular_values(X)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_bad_batch_size(batch_size):
    with pytest.raises(NMTuneError, match="batch_size"):
        spectrum.singular_values(np.ones((10, 2)), batch_size=batch_size)


@pytest.mark.parametrize(
    "s,sve,lsvr",
    [
        # p = (3/4, 1/4): −(¾ ln ¾ + ¼ ln ¼)
        ([3.0, 1.0], 0.5623351446188083, 0.75),
        ([1.0, 3.0], 0.5623351446188083, 0.75),  # order does not matter
        ([2.0, 2.0, 2.0, 2.0], math.log(4), 0.25),
        ([5.0, 0.0, 0.0], 0.0, 1.0),  # zeros contribute nothing
        # p = (1/2, 1/3, 1/6)
        ([3.0, 2.0, 1.0], -(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6), 0.5),
    ],
)
def test_metrics_by_hand(s, sve, lsvr):
    assert spectrum.sve(s) == pytest.approx(sve, rel=1e-12, abs=1e-15)
    assert spectrum.lsvr(s) == pytest.approx(lsvr, rel=1e-12)
    assert spectrum.effective_rank(s) == pytest.approx(math.exp(sve), rel=1e-12)


@pytest.mark.parametrize(
    "s,match",
    [([0.0, 0.0], "no variance"), ([1.0, -0.5], "non-negative"), ([], "empty"),
     ([[1.0, 2.0]], "1-D"), ([1.0, np.nan], "NaN")],
)
def test_metrics_reject_bad_values(s, match):
    with pytest.raises(NMTuneError, match=match):
        spectrum.sve(s)


def test_summary_agrees_with_reference():
    X = _features(200, 10)
    out = spectrum.summary(torch.from_numpy(X), batch_size=64)
    s = _reference(X)
    p = s / s.sum()
    assert out["n"] == 200 and out["d"] == 10 and out["normalize"] and out["center"]
    assert out["sve"] == pytest.approx(-np.sum(p * np.log(p)), rel=1e-9)
    assert out["lsvr"] == pytest.approx(p.max(), rel=1e-9)
    assert out["effective_rank"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-9)
    np.testing.assert_allclose(out["singular_values"], s, rtol=1e-9)


def test_summary_of_constant_features_raises():
    with pytest.raises(NMTuneError, match="no variance"):
        spectrum.summary(np.ones((5, 3)))


def test_nan_in_a_later_batch_and_list_input():
    X = _features(100, 4)
    X[97, 2] = np.nan
    with pytest.raises(NMTuneError, match="NaN"):
        spectrum.singular_values(X, batch_size=10)
    with pytest.raises(NMTuneError, match="numeric"):
        spectrum.singular_values(np.array([["a", "b"], ["c", "d"], ["e", "f"]]))
    _assert_close(spectrum.singular_values(X[:50].tolist()), _reference(X[:50]))
