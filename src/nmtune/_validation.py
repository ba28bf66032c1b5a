"""Input checks shared by every module: clear errors naming the problem, never a silent result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class NMTuneError(ValueError):
    """An input nmtune cannot use. The message names the problem and, where known, the fix."""


#: What a feature array of each dimensionality holds, for error messages.
_LAYOUTS = {2: "N×D", 3: "V×N×D"}


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
        if all(d in _LAYOUTS for d in ndim):
            want += f" ({' or '.join(_LAYOUTS[d] for d in ndim)})"
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


#: Label dtype kinds a classifier takes, by the word used in messages.
_LABEL_KINDS = {"b": "booleans", "i": "integers", "u": "integers", "U": "strings", "S": "strings"}


def label_kind(y: np.ndarray) -> str:
    """``"integers"``, ``"booleans"`` or ``"strings"``: what the 1-D label array ``y`` holds."""
    return _LABEL_KINDS[y.dtype.kind]


def as_class_labels(y, name: str = "labels") -> np.ndarray:
    """Return ``y`` as 1-D class labels: integers, booleans or strings.

    Float labels that are all whole numbers (as a CSV or a float array round trip leaves them)
    become int64; any other float is a regression target, rejected as continuous.
    """
    y = as_label_array(y, name)
    if y.dtype.kind == "f":
        fractional = y[y != np.round(y)]
        if fractional.size:
            raise NMTuneError(
                f"{name} are continuous (e.g. {fractional[0]:g}); a classifier needs class "
                "labels (integers or strings), not continuous labels"
            )
        return y.astype(np.int64)
    if y.dtype.kind not in _LABEL_KINDS:
        raise NMTuneError(f"{name} must be integers or strings, got dtype {y.dtype}")
    return y


def check_feature_set(X, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (N×D, or V×N×D views) and their N class labels, checked together.

    ``name`` (a file, say) starts every error message.
    """
    X = as_float_array(X, f"{name}: features", ndim=(2, 3))
    y = as_class_labels(y, f"{name}: labels")
    if X.shape[-2] != y.shape[0]:
        raise NMTuneError(
            f"{name}: features of shape {X.shape} hold {X.shape[-2]} samples but "
            f"{y.shape[0]} labels; they must match"
        )
    return X, y


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
        want = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise NMTuneError(f"{name} must be {want}, got {value!r}")
    return int(value)


def check_seed(value, name: str = "seed") -> int:
    """``value`` as a seed numpy and scikit-learn accept: an int in [0, 2**32)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not (
            0 <= value < 2**32):
        raise NMTuneError(f"{name} must be an integer in [0, 2**32), got {value!r}")
    return int(value)


def check_str(value, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise NMTuneError(f"{name} must be a non-empty string, got {value!r}")
    return value


# -- memory budget ----------------------------------------------------------------------------

#: Share of the available memory one load or fit may plan to use: the rest is headroom for
#: the interpreter, the allocator's slack and whatever else runs beside it.
MEMORY_FRACTION = 0.8
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    power = 0
    while n >= 1024 and power < len(units) - 1:
        n, power = n / 1024, power + 1
    return f"{n:.0f} B" if power == 0 else f"{n:.1f} {units[power]}"


def available_memory() -> int | None:
    """Bytes of RAM this process could still get: Linux MemAvailable, capped by a cgroup
    (container) limit, else the free pages; None where neither is known."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            return None
    return max(min(candidates), 0)


def memory_limit(available: int | None) -> int | None:
    """Bytes one load or fit may use: ``$NMTUNE_MEMORY_LIMIT`` when set (bytes with an optional
    K/M/G/T suffix, or ``none`` for no check), else :data:`MEMORY_FRACTION` of ``available``."""
    text = os.environ.get("NMTUNE_MEMORY_LIMIT", "").strip().upper().removesuffix("B")
    if text == "NONE":
        return None
    if text:
        number, unit = (text[:-1], text[-1]) if text[-1] in _UNITS else (text, "")
        try:
            return int(float(number) * _UNITS[unit])
        except ValueError:
            raise NMTuneError(
                f"NMTUNE_MEMORY_LIMIT must be bytes with an optional K/M/G/T suffix (e.g. 16G) "
                f"or 'none', got {os.environ['NMTUNE_MEMORY_LIMIT']!r}"
            ) from None
    return None if available is None else int(MEMORY_FRACTION * available)


def check_memory(needed: int, what: str, fix: str, available: int | None) -> None:
    """Raise before allocating when ``what`` needs more than :func:`memory_limit` allows.

    Parameters
    ----------
    needed : int
        Estimated bytes.
    what : str
        The operation, e.g. ``"fitting NMTuneClassifier on 10×100000 features"``.
    fix : str
        What the user can change.
    available : int or None
        Bytes available on the device the memory comes from (None: unknown, no check).
    """
    limit = memory_limit(available)
    if limit is None or needed <= limit:
        return
    source = ("NMTUNE_MEMORY_LIMIT" if os.environ.get("NMTUNE_MEMORY_LIMIT") else
              f"{MEMORY_FRACTION:.0%} of the {format_bytes(available)} available")
    raise NMTuneError(
        f"{what} needs about {format_bytes(needed)} but the limit is {format_bytes(limit)} "
        f"({source}); {fix}, or set NMTUNE_MEMORY_LIMIT (e.g. 64G, or none) to override"
    )
