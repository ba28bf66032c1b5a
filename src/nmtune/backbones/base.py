"""What every backbone offers: ``embed(batch) -> (B, D) float32`` plus a stable identity."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backbone(ABC):
    """A frozen feature extractor.

    Subclasses set ``name``, ``feature_dim`` and ``modality`` (``"image"`` or ``"text"``) and
    implement :meth:`embed` and :meth:`identity`.
    """

    name: str
    feature_dim: int
    modality: str

    @abstractmethod
    def embed(self, batch) -> np.ndarray:
        """Features of one batch: a slice of ``Dataset.inputs`` in, ``(B, feature_dim)`` out."""

    @abstractmethod
    def identity(self) -> str:
        """A string that changes whenever the outputs could change (config, weights hash)."""

    def to(self, device) -> Backbone:
        """Move to ``device`` where that means something; black boxes ignore it."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim})"
