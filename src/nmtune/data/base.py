"""The in-memory dataset every source returns and every backbone consumes, and the helpers
the sources build it with (content fingerprints, label coding, fixed train/test splits)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .._hashing import content_digest, sha256_parts
from .._splits import stratify_labels
from .._validation import NMTuneError

if TYPE_CHECKING:
    from .lazy import LazyImages

#: Seed of the fixed train/test splits the sources make. Fixed, not the caller's seed, so a row
#: never moves between train and test from one run to the next; ``load_dataset(seed=...)``
#: only picks subsets.
SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset: in memory, or images decoded from files when indexed.

    Attributes
    ----------
    name : str
        Registry name (``"mnist"``, ``"digits-framed"``, ...).
    split : str
        ``"train"``, ``"test"``, ...
    inputs : ndarray of shape (N, C, H, W), float32 in [0, 1]; or list of N str for text;
        or :class:`~nmtune.data.lazy.LazyImages`, which indexes like that array (slices and
        index arrays return decoded ndarrays) for folders too large for memory
    labels : ndarray of shape (N,), int64 in ``[0, len(classes))``
    classes : tuple of str
        Class names, indexed by label.
    modality : {"image", "text"}
    fingerprint : str
        Hex digest identifying the content (source, split, transform and subset); the feature
        cache keys on it, so two datasets with equal fingerprints must hold equal data.
    """

    name: str
    split: str
    inputs: np.ndarray | list[str] | LazyImages
    labels: np.ndarray
    classes: tuple[str, ...]
    modality: str
    fingerprint: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.modality not in ("image", "text"):
            raise NMTuneError(f"modality must be 'image' or 'text', got {self.modality!r}")
        if len(self.inputs) != len(self.labels):
            raise NMTuneError(
                f"dataset {self.name}/{self.split}: {len(self.inputs)} inputs but "
                f"{len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def take(self, indices: np.ndarray, tag: str) -> Dataset:
        """A new dataset of the rows ``indices``; ``tag`` names the selection in its fingerprint."""
        indices = np.asarray(indices, dtype=np.int64)
        # take(axis=0) is ndarray[indices] for arrays and keeps LazyImages lazy.
        inputs = (
            [self.inputs[i] for i in indices]
            if self.modality == "text"
            else self.inputs.take(indices, axis=0)
        )
        return Dataset(
            name=self.name,
            split=self.split,
            inputs=inputs,
            labels=self.labels[indices],
            classes=self.classes,
            modality=self.modality,
            fingerprint=sha256_parts(self.fingerprint, tag),
            info=dict(self.info),
        )

    def subset(self, limit: int | None, seed: int = 0) -> Dataset:
        """A seeded, class-stratified random subset of ``limit`` rows (all rows if ``None``)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise NMTuneError(f"limit must be positive, got {limit}")
        from sklearn.model_selection import train_test_split

        # limit >= num_classes (declared, not just present) stays as it always was: a subset's
        # fingerprint is its tag, so the rows one tag names must never change.
        stratify = (
            stratify_labels(self.labels, limit, len(self) - limit)
            if limit >= self.num_classes else None
        )
        chosen, _ = train_test_split(
            np.arange(len(self)), train_size=limit, random_state=seed, stratify=stratify
        )
        return self.take(np.sort(chosen), f"subset:{limit}:{seed}")


# --------------------------------------------------------------------------- for sources


def _dataset(name, split, inputs, labels, classes) -> Dataset:
    """A Dataset whose fingerprint is the digest of its content (images or texts).

    Memoised (read-only) arrays are handed out as copies: a caller may then write into its
    arrays, and torch accepts them without warnings, while the memo stays intact.
    """
    modality = "text" if isinstance(inputs, list) else "image"
    if modality == "image" and not inputs.flags.writeable:
        inputs = inputs.copy()
    if not labels.flags.writeable:
        labels = labels.copy()
    return Dataset(
        name=name,
        split=split,
        inputs=inputs,
        labels=labels,
        classes=tuple(classes),
        modality=modality,
        fingerprint=content_digest(inputs, labels, modality, split),
    )


def _encode_labels(raw: np.ndarray, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes and class names (sorted unique values) of arbitrary labels."""
    try:
        values, codes = np.unique(raw, return_inverse=True)
    except TypeError:
        raise NMTuneError(f"{what} mixes types (e.g. numbers and strings); use one") from None
    if len(values) < 2:
        raise NMTuneError(f"{what} has a single class {values.tolist()}; need at least two")
    return codes.astype(np.int64).ravel(), tuple(str(v) for v in values)


def _stratified_split(inputs, labels, test_size: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_test = math.ceil(test_size * n)
    if n < 2:
        raise NMTuneError(f"{n} example(s) cannot be split into train and test")
    stratify = stratify_labels(labels, n_test, n - n_test)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_size, random_state=SPLIT_SEED, stratify=stratify
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    return {
        "train": _frozen(inputs[idx_train], labels[idx_train]),
        "test": _frozen(inputs[idx_test], labels[idx_test]),
    }


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mark memoised arrays read-only: a caller writing into one would corrupt every later load."""
    for a in arrays:
        a.setflags(write=False)
    return arrays
