"""Tuners on frozen features: scikit-learn classifiers for the linear probe, MLP probe and NMTune.

Every tuner takes pre-extracted features, never the backbone: ``X`` is N×D (one view) or
V×N×D (V augmented views of the same N samples, row-aligned) at fit time, and N×D at
predict time (a V×N×D array is read as its view 0). docs/design.md §3.1 gives the exact
objective.

- :class:`LinearProbe` (``"lp"``, :mod:`.linear`) -- the CLIP protocol: standardise, L-BFGS
  multinomial logistic regression, a log-spaced sweep of the L2 strength on a stratified
  validation split, refit on train+val with the chosen strength.
- :class:`NMTuneClassifier` (``"nmtune"``, :mod:`.mlp`) -- ``z = s ⊙ MLP(f) + f`` and a
  linear head, trained with cross-entropy plus NMTune's three regularisers.
- :class:`MLPProbe` (``"mlp"``, :mod:`.mlp`) -- NMTuneClassifier with the regulariser weights
  fixed at 0.
- :class:`AutoTuner` (``"auto"``, :mod:`.auto`) -- LP, MLP or NMTune, chosen by
  cross-validation on the training set, the winner refitted on all of it.

``protocol="authors"`` replays the paper's MLP/NMTune procedure; the default protocol starts
from the linear probe (:data:`PROTOCOLS`).

:mod:`.base` holds the input checks and the classifier face they share, :mod:`.registry` the
names (:func:`create_tuner`, :func:`list_tuners`). The registry loads without torch; the
estimators import it when first reached (``nmtune.tuners.LinearProbe``).
"""

from __future__ import annotations

import importlib

from .registry import TunerSpec, create_tuner, get_tuner, list_tuners, register_tuner

__all__ = [
    "PROTOCOLS",
    "AutoTuner",
    "LinearProbe",
    "MLPProbe",
    "NMTuneClassifier",
    "ResidualMLP",
    "TunerSpec",
    "batch_bounds",
    "create_tuner",
    "fit_memory_bytes",
    "get_tuner",
    "list_tuners",
    "register_tuner",
    "train_step",
]

#: The module defining each torch-backed name, imported on first access.
_LAZY = {
    "AutoTuner": "auto",
    "PROTOCOLS": "mlp",
    "LinearProbe": "linear",
    "MLPProbe": "mlp",
    "NMTuneClassifier": "mlp",
    "ResidualMLP": "mlp",
    "batch_bounds": "mlp",
    "fit_memory_bytes": "mlp",
    "train_step": "mlp",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
