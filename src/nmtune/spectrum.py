"""Singular-value spectrum of a feature matrix and the metrics read off it (docs/design.md §3.2).

Features ``X`` (N×D) are optionally L2-normalised per row, then centred per feature (column);
both steps are on by default. With ``σ₁ ≥ … ≥ σ_m`` the singular values and
``p_i = σ_i / Σ_j σ_j``:

- SVE (singular value entropy) ``= −Σ p_i ln p_i``
- LSVR (largest singular value ratio) ``= σ₁ / Σ_j σ_j``
- effective rank ``= exp(SVE)`` (Roy & Vetterli 2007; RankMe adds an ε we do not need)

For N ≥ D the values are exact square roots of the eigenvalues of the D×D Gram matrix,
accumulated in float64 over row batches, so any N runs in O(D²) extra memory. For N < D the
(N×D) prepared matrix is smaller than that Gram matrix and goes straight to an SVD.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ._validation import NMTuneError, as_float_array, check_int

__all__ = [
    "effective_rank",
    "lsvr",
    "singular_values",
    "singular_values_from_batches",
    "summary",
    "sve",
]

#: Default row batch: about this many bytes of float64 per batch.
_BATCH_BYTES = 32 << 20


def singular_values(
    X, normalize: bool = True, center: bool = True, batch_size: int | None = None
) -> np.ndarray:
    """Exact singular values of the (optionally row-normalised, column-centred) features.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (N, D)
        Finite features; float32 stays float32 in memory, each batch is processed in float64.
    normalize : bool
        Scale each row to unit L2 norm first (all-zero rows stay zero).
    center : bool
        Subtract each feature's (column's) mean. This removes one dimension: when N ≤ D the
        last value is (numerically) zero.
    batch_size : int, optional
        Rows per batch for the N ≥ D route; default about 32 MiB of float64 per batch.

    Returns
    -------
    s : ndarray of float64, shape (min(N, D),)
        Descending, non-negative.
    """
    X = _as_matrix(X)
    n, d = X.shape
    if n < d:
        # The prepared N×D copy is smaller than a D×D Gram matrix, and an SVD keeps the
        # small values accurate to machine precision rather than to its square root.
        Z = _prepare(as_float_array(X).astype(np.float64), normalize)
        if center:
            Z -= Z.mean(axis=0)
        return np.linalg.svd(Z, compute_uv=False)
    step = _batch_rows(batch_size, d)
    return singular_values_from_batches(
        (X[i : i + step] for i in range(0, n, step)), normalize=normalize, center=center
    )


def singular_values_from_batches(
    batches: Iterable, normalize: bool = True, center: bool = True
) -> np.ndarray:
    """Exact singular values of the row-concatenation of ``batches``, read once, in O(D²) memory.

    Parameters
    ----------
    batches : iterable of array-like, each of shape (n_b, D)
        Consecutive row blocks of the feature matrix (e.g. a generator over a file or a model's
        outputs); the full N×D matrix is never held.
    normalize, center : bool
        As in :func:`singular_values`.

    Returns
    -------
    s : ndarray of float64, shape (min(N, D),)
        Descending, non-negative. For N ≪ D prefer :func:`singular_values`, whose SVD keeps
        values far below ``σ₁`` more accurate.
    """
    gram, n = _gram(batches, normalize, center)
    eig = np.linalg.eigvalsh(gram)[::-1][: min(n, gram.shape[0])]
    # Rounding leaves eigenvalues of a (near-)singular Gram matrix slightly negative.
    return np.sqrt(np.clip(eig, 0.0, None))


def _gram(batches: Iterable, normalize: bool, center: bool) -> tuple[np.ndarray, int]:
    """``ZᵀZ`` (float64, D×D) of the prepared matrix ``Z``, and its number of rows N."""
    gram = shift = col_sum = None
    n = 0
    for raw in batches:
        b = _prepare(as_float_array(raw, "feature batch").astype(np.float64), normalize)
        if gram is None:
            d = b.shape[1]
            gram, col_sum = np.zeros((d, d)), np.zeros(d)
            # One-pass centring as XᵀX − N·μμᵀ cancels catastrophically when the mean is large
            # against the spread (ReLU features). Accumulating around the first batch's mean
            # instead leaves only a small correction m mᵀ with m = mean − shift.
            shift = b.mean(axis=0) if center else np.zeros(d)
        elif b.shape[1] != gram.shape[0]:
            raise NMTuneError(f"feature batches disagree on D: {gram.shape[0]} then {b.shape[1]}")
        b -= shift
        gram += b.T @ b
        col_sum += b.sum(axis=0)
        n += b.shape[0]
    if gram is None:
        raise NMTuneError("no feature batches were given")
    if center:
        m = col_sum / n
        gram -= n * np.outer(m, m)
    return gram, n


def _as_matrix(X) -> np.ndarray:
    """``X`` as a 2-D array, without :func:`as_float_array`'s full-size finiteness mask.

    That mask alone would take N·D bytes; each batch is checked (dtype, NaN/inf) as it is
    read instead, which keeps the streaming route within O(D²) extra memory.
    """
    if hasattr(X, "detach"):  # torch tensor
        X = X.detach().cpu().numpy()
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.size == 0:
        # Lists and malformed arrays: the full check, with the shared error messages.
        return as_float_array(X)
    return X


def _prepare(b: np.ndarray, normalize: bool) -> np.ndarray:
    """Row-normalise the float64 array ``b`` in place when asked; all-zero rows stay zero."""
    if normalize:
        norms = np.linalg.norm(b, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        b /= norms
    return b


def _batch_rows(batch_size: int | None, d: int) -> int:
    if batch_size is None:
        return max(1, _BATCH_BYTES // (8 * d))
    return check_int(batch_size, "batch_size", 1)


def _proportions(s) -> np.ndarray:
    """``p_i = σ_i / Σσ`` after checking ``s`` is a non-negative, not-all-zero 1-D array."""
    s = as_float_array(s, "singular values", ndim=(1,)).astype(np.float64)
    if s.min() < 0:
        raise NMTuneError(f"singular values must be non-negative, got {s.min()}")
    total = s.sum()
    if total <= 0:
        raise NMTuneError("all singular values are zero: the features have no variance")
    return s / total


def sve(s) -> float:
    """Singular value entropy ``−Σ p_i ln p_i`` (natural log; zero values contribute 0).

    Parameters
    ----------
    s : array-like of shape (m,)
        Singular values, in any order.
    """
    p = _proportions(s)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def lsvr(s) -> float:
    """Largest singular value ratio ``max σ / Σσ``, in (0, 1]. ``s``: shape (m,), any order."""
    return float(_proportions(s).max())


def effective_rank(s) -> float:
    """``exp(SVE)``: the number of equal singular values with the same entropy, in [1, m]."""
    return float(np.exp(sve(s)))


def summary(
    X, normalize: bool = True, center: bool = True, batch_size: int | None = None
) -> dict:
    """Spectrum metrics of ``X`` (N×D) in one dict.

    Returns
    -------
    dict
        ``sve``, ``lsvr``, ``effective_rank`` (float), ``n``, ``d`` (int), ``normalize``,
        ``center`` (bool) and ``singular_values`` (ndarray of shape (min(N, D),), descending).
    """
    s = singular_values(X, normalize=normalize, center=center, batch_size=batch_size)
    n, d = np.shape(X)
    return {
        "sve": sve(s),
        "lsvr": lsvr(s),
        "effective_rank": effective_rank(s),
        "n": int(n),
        "d": int(d),
        "normalize": bool(normalize),
        "center": bool(center),
        "singular_values": s,
    }
