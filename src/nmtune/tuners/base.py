"""Input checks and the classifier face every tuner shares.

Features are checked once here for every tuner (dense, finite, N×D or V×N×D); parameters are
checked against each class's scikit-learn ``_parameter_constraints`` table, built from the
shared entries below; :class:`FeatureClassifier` derives ``predict``, ``predict_proba`` and
``decision_function`` from one ``_logits`` method.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse
import scipy.special
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .._splits import stratify_labels
from .._validation import NMTuneError, as_float_array, as_label_array, check_same_length

# --------------------------------------------------------------------------- input checks


def as_features(X, ndim: tuple[int, ...]) -> np.ndarray:
    """Finite float array of an allowed dimensionality, with errors that name the problem."""
    if scipy.sparse.issparse(X):
        raise NMTuneError("sparse features are not supported; pass a dense array (X.toarray())")
    X = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if X.dtype == object:
        # Object arrays of numbers are numeric data in disguise; anything else fails here with
        # Python's own "float() argument must be a string or a number" TypeError.
        X = X.astype(np.float64)
    if np.iscomplexobj(X):
        raise NMTuneError(f"Complex data not supported: features have dtype {X.dtype}")
    if X.ndim == 1:
        raise NMTuneError(
            f"features must be 2-D (N×D), got a 1-D array of shape {X.shape}. Reshape your "
            "data with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for one sample"
        )
    if X.ndim in ndim and X.shape[-1] == 0:
        raise NMTuneError(
            f"features have 0 feature(s) (shape={X.shape}) while a minimum of 1 is required."
        )
    return as_float_array(X, name="features", ndim=ndim)


def check_fit_data(X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate training data.

    Returns
    -------
    views : ndarray of shape (V, N, D)
        One view becomes V = 1.
    classes : ndarray of shape (K,)
        Sorted unique labels, K >= 2.
    y_index : ndarray of shape (N,), int64
        Position of each label in ``classes``.
    """
    X = as_features(X, ndim=(2, 3))
    views = X[None] if X.ndim == 2 else X
    if y is None:
        raise NMTuneError("a classifier requires y to be passed, but the target y is None")
    if hasattr(y, "shape") and len(y.shape) == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; it is read as 1-D.",
            DataConversionWarning,
            stacklevel=3,
        )
    y = as_label_array(y)
    check_classification_targets(y)
    check_same_length(views.shape[1], y.shape[0])
    classes, y_index = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise NMTuneError(
            f"labels hold one class only ({classes[0].item()!r}); a classifier needs at least 2"
        )
    return views, classes, y_index.astype(np.int64)


def check_predict_features(estimator: BaseEstimator, X) -> np.ndarray:
    """N×D features for a fitted estimator; V×N×D input is read as its view 0."""
    check_is_fitted(estimator)
    X = as_features(X, ndim=(2, 3))
    if X.ndim == 3:
        X = X[0]
    if X.shape[1] != estimator.n_features_in_:
        raise NMTuneError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input"
        )
    return X


def stratified_split(
    y_index: np.ndarray, val_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation sample indices, stratified by class where every class allows it.

    A class with a single sample cannot sit on both sides; then the split is a plain shuffle
    (tiny data sets only).
    """
    if not 0.0 < val_size < 1.0:
        raise NMTuneError(f"validation fraction must be in (0, 1), got {val_size}")
    n = y_index.shape[0]
    n_val = math.ceil(val_size * n)
    if n_val >= n:
        raise NMTuneError(f"validation fraction {val_size} leaves no training sample of {n}")
    stratify = stratify_labels(y_index, n_val, n - n_val)
    return train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)


def seed_from(random_state) -> int:
    """An int seed from scikit-learn's ``random_state``: an int is used as is (so a split can be
    reproduced with the same int); None or a RandomState draws one."""
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


#: A feature's scale is at least this fraction of the median scale of the non-constant
#: features.
SCALE_FLOOR = 0.1


def standardizer(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale; constant features keep scale 1 (as StandardScaler does).

    Unlike StandardScaler, a scale is floored at :data:`SCALE_FLOOR` times the median scale
    of the non-constant features: a near-dead feature (EfficientNet-Lite0 has hundreds on a
    small training set) is not blown up to unit variance, where it is noise the model and the
    L2 penalty treat as signal. The median, not a mean, so that one feature in large units
    does not lift the floor above the others. Features at least a tenth of the median scale
    are standardised exactly as StandardScaler does. Measured on EfficientNet-Lite0 / MNIST at
    10 per class (332 of 1,280 features constant, more near-constant): the linear probe
    62.6 → 68.8 %; MiniLM and ResNet-8 features are unaffected (docs/benchmarks.md).
    """
    mean = rows.mean(axis=0, dtype=np.float64)
    std = rows.std(axis=0, dtype=np.float64)
    constant = std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)
    reference = np.median(std[~constant]) if not constant.all() else 0.0
    scale = np.maximum(std, SCALE_FLOOR * reference)
    scale[constant] = 1.0
    return mean, scale


# --------------------------------------------------------------------------- shared API


class InvalidParameter(NMTuneError, InvalidParameterError):
    """A parameter outside its constraints: both nmtune's error and scikit-learn's."""


#: Constraints every tuner shares (scikit-learn's ``_parameter_constraints`` vocabulary).
COMMON_CONSTRAINTS = {
    "device": [str, torch.device],
    "random_state": ["random_state"],
}
POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]
NON_NEGATIVE = [Interval(Real, 0, None, closed="left")]


class FeatureClassifier(ClassifierMixin, BaseEstimator):
    """predict / predict_proba / decision_function from one ``_logits`` method.

    Logits have one column per class. For two classes ``decision_function`` returns the
    scikit-learn binary form, ``logit[1] - logit[0]`` of shape (N,).
    """

    def _validate_params(self) -> None:
        """Check every parameter against ``_parameter_constraints``, scikit-learn's way; the
        error is also an :class:`NMTuneError`, so the CLI reports it in one line."""
        try:
            super()._validate_params()
        except InvalidParameterError as exc:
            raise InvalidParameter(str(exc)) from None

    def _logits(self, X: np.ndarray) -> np.ndarray:  # (N, D) -> (N, K) float64
        raise NotImplementedError

    def decision_function(self, X) -> np.ndarray:
        """Class scores.

        Parameters
        ----------
        X : array-like of shape (N, D), or (V, N, D) read as view 0

        Returns
        -------
        ndarray of shape (N, K), or (N,) when there are two classes
        """
        logits = self._logits(check_predict_features(self, X))
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (N, K), columns ordered as ``classes_``."""
        return scipy.special.softmax(self._logits(check_predict_features(self, X)), axis=1)

    def predict(self, X) -> np.ndarray:
        """Predicted labels, shape (N,), drawn from ``classes_``."""
        logits = self._logits(check_predict_features(self, X))
        return self.classes_[np.argmax(logits, axis=1)]


