"""Input checks shared by every module: clear errors naming the problem, never a silent result."""

from __future__ import annotations

import numpy as np


class NMTuneError(ValueError):
    """An input nmtune cannot use. The message names the problem and, where known, the fix."""


def as_float_array(X, name: str = "features", ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    """Return ``X`` as a finite float array with one of the allowed dimensionalities.

    Parameters
    ----------
    X : array-like or torch.Tensor
    name : str
        Used in error messages.
    ndim : tuple of int
        Allowed numbers of dimensions (2 for N×D, 3 for V×N×D views).
    """
    if hasattr(X, "detach"):  # torch tensor
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise NMTuneError(f"{name} could not be read as a numeric array: {exc}") from None
    if X.dtype == object or not (
        np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)
    ):
        raise NMTuneError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise NMTuneError(f"{name} must be {want}, got shape {X.shape}")
    if X.size == 0 or 0 in X.shape:
        raise NMTuneError(f"{name} is empty (shape {X.shape})")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        bad = int(np.size(X) - np.count_nonzero(np.isfinite(X)))
        raise NMTuneError(f"{name} contains {bad} NaN or infinite value(s)")
    return X


def as_label_array(y, name: str = "labels") -> np.ndarray:
    """Return ``y`` as a 1-D array (any sortable dtype), rejecting NaN and wrong shapes."""
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise NMTuneError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise NMTuneError(f"{name} is empty")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise NMTuneError(f"{name} contain NaN or infinite values")
    return y


def check_same_length(n_features: int, n_labels: int) -> None:
    if n_features != n_labels:
        raise NMTuneError(
            f"features have {n_features} samples but labels have {n_labels}; they must match"
        )


def check_rate(rate: float, name: str = "rate") -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise NMTuneError(f"{name} must be in [0, 1], got {rate}")
    return rate


def check_keys(mapping: dict, allowed, where: str) -> None:
    """Raise naming the first key of ``mapping`` not in ``allowed``, with the closest allowed
    key as a suggestion (a typo such as ``epoch`` for ``epochs`` must never pass silently)."""
    import difflib

    allowed = sorted(allowed)
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise NMTuneError(
                f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}"
            )


def check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a bool (an int subclass) is always a mistake here."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise NMTuneError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_str(value, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise NMTuneError(f"{name} must be a non-empty string, got {value!r}")
    return value
