"""A study's tuning methods: each ``methods:`` entry checked, and the estimator it describes.

:func:`make_tuner` is the one place an entry becomes an estimator: config validation builds
it to check its parameters, the cells fit it, and :mod:`nmtune.plan` times it.
"""

from __future__ import annotations

from typing import Any

from .._validation import NMTuneError, check_int, check_keys
from ..tuners import create_tuner, get_tuner, list_tuners

#: Settings of a method entry that belong to the study, not to the estimator.
_STUDY_METHOD_KEYS = ("method", "views", "clean_view", "select", "select_val_size")


def parse_methods(obj: Any, source: str, device: str) -> dict:
    """Each method's settings, with the estimator it describes built and its parameters
    validated (every candidate of a ``select`` grid too)."""
    if not isinstance(obj, dict) or not obj:
        raise NMTuneError(f"{source}: 'methods' must map method names to their settings")
    methods = {}
    for name, params in obj.items():
        where = f"{source}: methods.{name}"
        if not isinstance(params, dict | None):
            raise NMTuneError(f"{where}: settings must be a mapping, got {params!r}")
        params = dict(params or {})
        params.setdefault("method", name)
        names = tuple(spec.name for spec in list_tuners())
        if params["method"] not in names:
            raise NMTuneError(
                f"{where}: unknown type {params['method']!r}; give 'method:' one of {names}"
            )
        _check_method(params, where, device)
        methods[name] = params
    return methods


def _check_method(params: dict, where: str, device: str) -> None:
    from sklearn.model_selection import ParameterGrid

    if "random_state" in params:
        raise NMTuneError(f"{where}: random_state is set from the study's seeds")
    own = [p for p in get_tuner(params["method"]).param_names if p != "random_state"]
    check_keys(params, [*own, *_STUDY_METHOD_KEYS], where)
    views = check_int(params.get("views", 1), f"{where}.views", 1)
    clean_view = params.get("clean_view", False)
    if not isinstance(clean_view, bool):
        raise NMTuneError(f"{where}.clean_view must be true or false, got {clean_view!r}")
    if clean_view and views < 2:
        raise NMTuneError(f"{where}.clean_view needs views: 2 or more (view 0 clean, the rest "
                          f"augmented), got views: {views}")
    val_size = params.get("select_val_size", 0.2)
    if isinstance(val_size, bool) or not isinstance(val_size, int | float) or not (
            0 < val_size < 1):
        raise NMTuneError(f"{where}.select_val_size must be in (0, 1), got {val_size!r}")
    grid = params.get("select") or {}
    if not isinstance(grid, dict) or not all(
            isinstance(v, list) and v for v in grid.values()):
        raise NMTuneError(f"{where}.select: expected a mapping of setting -> non-empty list")
    check_keys(grid, own, f"{where}.select")
    estimator = make_tuner({**params, "select": None}, seed=0, device=device)
    try:
        for point in ParameterGrid(grid):
            estimator.set_params(**point)._validate_params()
    except NMTuneError as exc:
        raise NMTuneError(f"{where}: {exc}") from None


def make_tuner(params: dict, seed: int, device: str):
    """The estimator a method entry describes, wrapped in a validation search if it asks.

    ``params`` holds ``method`` (lp, mlp, nmtune), the estimator's own settings, and
    optionally ``select`` (a grid over settings, chosen on a held-out stratified split of the
    training set with scikit-learn's ``GridSearchCV``; the test set is never seen) with
    ``select_val_size``.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedShuffleSplit

    params = dict(params)
    method = params.pop("method")
    grid = params.pop("select", None)
    val_size = params.pop("select_val_size", 0.2)
    params.pop("views", None)
    params.pop("clean_view", None)
    if "device" in get_tuner(method).param_names:
        params.setdefault("device", device)
    estimator = create_tuner(method, random_state=seed, **params)
    if not grid:
        return estimator
    check_keys(grid, estimator.get_params(), f"select of {type(estimator).__name__}")
    split = StratifiedShuffleSplit(n_splits=1, test_size=val_size, random_state=seed)
    return GridSearchCV(estimator, grid, cv=split, refit=True)
