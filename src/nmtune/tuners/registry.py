"""Tuner registry: ``create_tuner(name, **params)`` builds any registered tuner.

The study's ``method:`` entries and ``nmtune tune --method`` both name tuners from here. Each
registration is a loader that imports its estimator class lazily, so listing tuners (the
CLI's ``--help``) never loads torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._validation import NMTuneError


@dataclass(frozen=True)
class TunerSpec:
    """What the registry knows about a tuner without importing it.

    Attributes
    ----------
    name : str
        Registry name (``method:`` in a study config, ``--method`` of ``nmtune tune``).
    loader : callable
        ``loader() -> type``: the scikit-learn classifier class.
    description : str
        One line.
    """

    name: str
    loader: Callable[[], type]
    description: str

    @property
    def estimator(self) -> type:
        """The estimator class (imports it)."""
        return self.loader()

    @property
    def param_names(self) -> list[str]:
        """The estimator's parameters, as ``get_params`` names them."""
        return self.estimator._get_param_names()


_REGISTRY: dict[str, TunerSpec] = {}


def register_tuner(name: str, *, description: str) -> Callable[[Callable[[], type]], Callable]:
    """Decorator registering ``loader() -> estimator class`` under ``name``.

    Examples
    --------
    >>> @register_tuner("svm", description="RBF support-vector machine")
    ... def _svm():
    ...     from sklearn.svm import SVC
    ...     return SVC
    """

    def decorator(loader: Callable[[], type]) -> Callable[[], type]:
        if name in _REGISTRY:
            raise NMTuneError(f"tuner {name!r} is already registered")
        _REGISTRY[name] = TunerSpec(name, loader, description)
        return loader

    return decorator


def list_tuners() -> list[TunerSpec]:
    """All registered tuners, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_tuner(name: str) -> TunerSpec:
    """The spec registered as ``name``."""
    if name not in _REGISTRY:
        raise NMTuneError(f"unknown tuner {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_tuner(name: str, **params):
    """The tuner ``name``, unfitted, with estimator parameters ``params``.

    Parameters
    ----------
    name : str
        A registered name (:func:`list_tuners`).
    **params
        Passed to the estimator (e.g. ``epochs=10, random_state=0``); checked at ``fit``.
    """
    cls = get_tuner(name).estimator
    try:
        return cls(**params)
    except TypeError as exc:
        raise NMTuneError(f"bad settings for tuner {name!r} ({cls.__name__}): {exc}") from None


# -- built-in tuners ---------------------------------------------------------------------------


@register_tuner("lp", description="CLIP-protocol linear probe, L2 strength chosen on a "
                "validation split")
def _linear_probe() -> type:
    from .linear import LinearProbe

    return LinearProbe


@register_tuner("mlp", description="MLP probe, the NMTune model trained with cross-entropy alone")
def _mlp_probe() -> type:
    from .mlp import MLPProbe

    return MLPProbe


@register_tuner("nmtune", description="NMTune, the MLP probe plus its consistency, covariance "
                "and spectrum regularisers")
def _nmtune() -> type:
    from .mlp import NMTuneClassifier

    return NMTuneClassifier


@register_tuner("auto", description="LP, MLP or NMTune, chosen by cross-validation on the "
                "training set and refitted on all of it")
def _auto() -> type:
    from .auto import AutoTuner

    return AutoTuner
