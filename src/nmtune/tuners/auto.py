"""The ``auto`` tuner: LP, MLP or NMTune, chosen by cross-validation on the training set.

Each candidate is scored on validation folds of the training set only (stratified k-fold for
small N, one stratified held-out split above ``holdout_above`` rows), the best mean accuracy
wins (ties: the earlier candidate, so the cheaper one), and the winner is refitted on all
of it. Work is shared: one :class:`LinearProbe` sweep per fold serves both the ``lp``
candidate and the probe-then-tune head of every MLP/NMTune candidate, the refit's probe
is the ``lp`` refit (fitted only when the winner needs it), and with the held-out split a
winning network is refitted warm: its split fit trained further on all rows for a quarter
of its epochs, rather than from scratch. The result has the shape of scikit-learn's
searches: ``best_estimator_``, ``best_params_``, ``best_score_``, ``best_index_`` and
``cv_results_``.
"""

from __future__ import annotations

import time
from numbers import Integral, Real

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils._param_validation import Interval

from .._validation import NMTuneError
from .base import (
    COMMON_CONSTRAINTS,
    POSITIVE_INT,
    FeatureClassifier,
    check_fit_data,
    seed_from,
    stratified_split,
)
from .linear import LinearProbe
from .registry import create_tuner

__all__ = ["DEFAULT_CANDIDATES", "AutoTuner"]

#: The candidates ``auto`` compares by default, in tie-break order (cheapest first): each is
#: a registered tuner's name under ``method`` and its parameters.
DEFAULT_CANDIDATES = (
    {"method": "lp"},
    # One network on standardised features started from the linear probe: the MLP probe.
    # NMTune on that start scored within 0.3 points of it (its regularisers add little there;
    # docs/results.md), so it is not a candidate of its own.
    {"method": "mlp"},
    # NMTune on raw features from a random head, as the authors train it, with the step
    # budget: far better than the standardised start on EfficientNet-Lite0 features.
    {"method": "nmtune", "protocol": "authors", "min_steps": 300},
)


def _same_params(a, b) -> bool:
    """Whether two estimators have equal parameters (array-valued ones compared by value)."""
    pa, pb = a.get_params(), b.get_params()
    return pa.keys() == pb.keys() and all(
        np.array_equal(pa[k], pb[k]) if isinstance(pa[k], np.ndarray | list)
        or isinstance(pb[k], np.ndarray | list) else pa[k] == pb[k] for k in pa)


class AutoTuner(FeatureClassifier):
    """Chooses among LP, MLP and NMTune variants by cross-validation on the training set and
    refits the winner on all of it.

    Parameters
    ----------
    candidates : list of dict or None, default=None
        Each ``{"method": <registered tuner>, **its parameters}``; None is
        :data:`DEFAULT_CANDIDATES`. ``device`` and ``random_state`` are passed to every one.
    n_splits : int, default=3
        Folds of the stratified k-fold used up to ``holdout_above`` training rows.
    holdout_above : int, default=2000
        Above this many rows, one stratified held-out split of ``val_size`` replaces k-fold.
    val_size : float, default=0.2
    device : str, default="auto"
    random_state : int, RandomState or None, default=None
        Seeds the folds and every candidate.

    Attributes
    ----------
    classes_ : ndarray of shape (K,)
    n_features_in_ : int
    best_estimator_ : estimator
        The winner, refitted on the whole training set.
    best_params_ : dict
        The winning candidate (``method`` and its parameters).
    best_score_ : float
        Its mean validation accuracy.
    best_index_ : int
        Its position in ``cv_results_``.
    cv_results_ : dict of ndarray
        One entry per candidate: ``params``, ``method``, ``split<i>_test_score``,
        ``mean_test_score``, ``std_test_score``, ``rank_test_score``, ``mean_fit_time``.
    n_splits_ : int
        Validation splits used (1 for the held-out split).
    refit_time_ : float
        Seconds of the final refit.
    """

    _parameter_constraints = {
        "candidates": [list, tuple, None],
        "n_splits": [Interval(Integral, 2, None, closed="left")],
        "holdout_above": POSITIVE_INT,
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        **COMMON_CONSTRAINTS,
    }

    def __init__(
        self,
        candidates: list[dict] | None = None,
        n_splits: int = 3,
        holdout_above: int = 2000,
        val_size: float = 0.2,
        device: str = "auto",
        random_state=None,
    ):
        self.candidates = candidates
        self.n_splits = n_splits
        self.holdout_above = holdout_above
        self.val_size = val_size
        self.device = device
        self.random_state = random_state

    def _validate_params(self) -> None:
        """The parameters, and every candidate's (so a study's config check catches them)."""
        super()._validate_params()
        self._candidates()

    def _candidates(self) -> list[dict]:
        candidates = list(DEFAULT_CANDIDATES if self.candidates is None else self.candidates)
        if not candidates or not all(isinstance(c, dict) and "method" in c for c in candidates):
            raise NMTuneError("candidates must be a non-empty list of {'method': name, ...} "
                              f"mappings, got {self.candidates!r}")
        candidates = [dict(c) for c in candidates]
        for c in candidates:
            if c["method"] == "auto":
                raise NMTuneError("an auto candidate cannot itself be 'auto'")
            if "random_state" in c:
                raise NMTuneError(f"candidate {c!r} sets random_state: AutoTuner's random_state "
                                  "seeds every candidate")
            self._build(c, 0)._validate_params()  # unknown names and bad values fail here
        return candidates

    def _build(self, candidate: dict, seed: int):
        params = {k: v for k, v in candidate.items() if k != "method"}
        estimator = create_tuner(candidate["method"], random_state=seed, **params)
        if "device" in estimator.get_params():
            estimator.set_params(device=self.device)
        return estimator

    def _splits(self, y_index: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        n = y_index.shape[0]
        if n > self.holdout_above:
            return [stratified_split(y_index, float(self.val_size), seed)]
        k = min(self.n_splits, n)
        if k < 2:
            raise NMTuneError(f"{n} sample(s) cannot be cross-validated")
        folds = (StratifiedKFold if np.bincount(y_index).min() >= k else KFold)(
            n_splits=k, shuffle=True, random_state=seed)
        return list(folds.split(np.zeros(n), y_index))

    def _check_splits(self, splits: list, y_index: np.ndarray) -> None:
        """Every split's training rows must hold two classes for a candidate to be fitted."""
        for train, _ in splits:
            if np.unique(y_index[train]).size < 2:
                counts = np.bincount(y_index)
                raise NMTuneError(
                    f"AutoTuner cannot validate its candidates on {y_index.shape[0]} samples "
                    f"({counts.min()} to {counts.max()} per class): a training split holds one "
                    "class only; pass more samples, or fit a tuner directly"
                )

    def _fit_one(self, candidate: dict, views: np.ndarray, labels: np.ndarray, seed: int,
                 probe: LinearProbe):
        """The candidate fitted on ``views``/``labels``, reusing ``probe`` (fitted on the same
        rows) as the ``lp`` candidate itself or as a probe-then-tune head."""
        estimator = self._build(candidate, seed)
        if isinstance(estimator, LinearProbe) and _same_params(estimator, probe):
            return probe
        fit_with_probe = getattr(estimator, "_fit", None)
        if fit_with_probe is not None:
            return fit_with_probe(views, labels, probe=probe)
        return estimator.fit(views, labels)

    def _refit(self, candidate: dict, views: np.ndarray, labels: np.ndarray, seed: int,
               split_fit) -> FeatureClassifier:
        """The winner fitted on all rows: warm from ``split_fit`` (its fit on the held-out
        split's training rows) when it is a network that saw every class, else from scratch
        with a probe fitted on all rows if it uses one."""
        estimator = self._build(candidate, seed)
        # A class whose only sample fell in the held-out rows is unknown to the split fit:
        # such a winner is refitted from scratch.
        if (split_fit is not None and hasattr(estimator, "_fit")
                and np.array_equal(split_fit.classes_, self.classes_)):
            return estimator._fit(views, labels, warm_start=split_fit)
        if hasattr(estimator, "_settings") and estimator._settings()["head_init"] == "probe":
            probe = LinearProbe(device=self.device, random_state=seed).fit(views, labels)
            return estimator._fit(views, labels, probe=probe)
        return estimator.fit(views, labels)

    def fit(self, X, y) -> AutoTuner:
        """Cross-validate every candidate on (X, y), then refit the best on all of it.

        Parameters
        ----------
        X : array-like of shape (N, D) or (V, N, D)
        y : array-like of shape (N,)

        Returns
        -------
        self
        """
        super()._validate_params()  # the candidates are checked once, by _candidates below
        views, self.classes_, y_index = check_fit_data(X, y)
        self.n_features_in_ = views.shape[2]
        labels = self.classes_[y_index]
        candidates = self._candidates()
        seed = seed_from(self.random_state)
        splits = self._splits(y_index, seed)
        self._check_splits(splits, y_index)
        scores = np.full((len(candidates), len(splits)), np.nan)
        seconds = np.zeros(len(candidates))
        fitted = [None] * len(candidates)  # the last split's fits: warm starts for the refit
        for s, (train, val) in enumerate(splits):
            started = time.perf_counter()
            probe = LinearProbe(device=self.device, random_state=seed).fit(
                views[:, train], labels[train])
            probe_seconds = time.perf_counter() - started  # charged to every candidate
            for c, candidate in enumerate(candidates):
                started = time.perf_counter()
                fitted[c] = self._fit_one(candidate, views[:, train], labels[train], seed, probe)
                scores[c, s] = fitted[c].score(views[0, val], labels[val])
                seconds[c] += probe_seconds + time.perf_counter() - started
        mean = scores.mean(axis=1)
        self.best_index_ = int(np.argmax(mean))  # first maximum: the earlier candidate
        self.best_params_ = candidates[self.best_index_]
        self.best_score_ = float(mean[self.best_index_])
        self.n_splits_ = len(splits)
        self.cv_results_ = {
            "params": candidates,
            "method": np.array([c["method"] for c in candidates], dtype=object),
            **{f"split{s}_test_score": scores[:, s] for s in range(len(splits))},
            "mean_test_score": mean,
            "std_test_score": scores.std(axis=1),
            "rank_test_score": (1 + (mean[None, :] > mean[:, None]).sum(axis=1)).astype(
                np.int32),
            "mean_fit_time": seconds / len(splits),
        }
        started = time.perf_counter()
        self.best_estimator_ = self._refit(self.best_params_, views, labels, seed,
                                           fitted[self.best_index_] if len(splits) == 1 else None)
        self.refit_time_ = time.perf_counter() - started
        return self

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self.best_estimator_._logits(X)
