"""The in-memory dataset every source returns and every backbone consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .._validation import NMTuneError

if TYPE_CHECKING:
    from .lazy import LazyImages


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
            fingerprint=_digest(self.fingerprint, tag),
            info=dict(self.info),
        )

    def subset(self, limit: int | None, seed: int = 0) -> Dataset:
        """A seeded, class-stratified random subset of ``limit`` rows (all rows if ``None``)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise NMTuneError(f"limit must be positive, got {limit}")
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(self))
        counts = np.bincount(self.labels, minlength=self.num_classes)
        stratify = (
            self.labels if counts[counts > 0].min() >= 2 and limit >= self.num_classes else None
        )
        chosen, _ = train_test_split(idx, train_size=limit, random_state=seed, stratify=stratify)
        return self.take(np.sort(chosen), f"subset:{limit}:{seed}")


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def content_digest(inputs: np.ndarray | list[str], labels: np.ndarray, *tags) -> str:
    """Fingerprint of the data itself (plus ``tags``), so equal content gives equal digests.

    Hashing the bytes rather than a source's name means a re-packaged or re-downloaded copy
    of the same data keeps its feature cache, and a changed one cannot reuse it.
    """
    h = hashlib.sha256()
    if isinstance(inputs, np.ndarray):
        h.update(f"{inputs.dtype.str}{inputs.shape}".encode())
        h.update(np.ascontiguousarray(inputs).data)
    else:
        for text in inputs:
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return _digest(h.hexdigest(), *tags)
