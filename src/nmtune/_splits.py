"""When a seeded split can be stratified by class: the one guard every split uses."""

from __future__ import annotations

import numpy as np


def stratify_labels(labels: np.ndarray, *sizes: int) -> np.ndarray | None:
    """``labels`` when a split into parts of ``sizes`` rows can be stratified by them, else None.

    scikit-learn's stratified splits need every present class at least twice and room for each
    present class in every part; where either fails the split is a plain shuffle (tiny data
    sets only) instead of an error.

    Parameters
    ----------
    labels : ndarray of shape (n,), non-negative ints
        Class codes.
    *sizes : int
        Rows in each part of the split (train and test, say).
    """
    counts = np.bincount(labels)
    present = np.count_nonzero(counts)
    return labels if counts[counts > 0].min() >= 2 and min(sizes) >= present else None
