"""Tuners on frozen features: scikit-learn classifiers for the linear probe, MLP probe and NMTune.

Every tuner takes pre-extracted features, never the backbone: ``X`` is N×D (one view) or
V×N×D (V augmented views of the same N samples, row-aligned) at fit time, and N×D at
predict time (a V×N×D array is read as its view 0). docs/design.md §3.1 gives the exact objective.

- :class:`LinearProbe` -- the CLIP protocol: standardise, L-BFGS multinomial logistic
  regression, a log-spaced sweep of the L2 strength on a stratified validation split, refit on
  train+val with the chosen strength.
- :class:`MLPProbe` -- ``z = s ⊙ MLP(f) + f`` and a linear head, trained with cross-entropy.
- :class:`NMTuneClassifier` -- the MLP probe plus NMTune's three regularisers.
"""

from __future__ import annotations

import copy
import math
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.special
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm.auto import tqdm

from ._torch import autocast, resolve_device, tune_cpu_allocator
from ._validation import (
    NMTuneError,
    as_float_array,
    as_label_array,
    available_memory,
    check_memory,
    check_same_length,
)
from .objective import AUTHOR_WEIGHTS, consistency_mse, covariance_penalty, top_singular_ratio

__all__ = ["LinearProbe", "MLPProbe", "NMTuneClassifier", "ResidualMLP", "train_step"]

#: Rows per forward pass at predict time: bounds memory for the r·D-wide hidden layer.
_PREDICT_CHUNK = 4096


# --------------------------------------------------------------------------- input checks


def _as_features(X, ndim: tuple[int, ...]) -> np.ndarray:
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


def _check_fit_data(X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    X = _as_features(X, ndim=(2, 3))
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
            f"labels hold one class only ({classes[0]!r}); a classifier needs at least 2"
        )
    return views, classes, y_index.astype(np.int64)


def _check_predict_features(estimator: BaseEstimator, X) -> np.ndarray:
    """N×D features for a fitted estimator; V×N×D input is read as its view 0."""
    check_is_fitted(estimator)
    X = _as_features(X, ndim=(2, 3))
    if X.ndim == 3:
        X = X[0]
    if X.shape[1] != estimator.n_features_in_:
        raise NMTuneError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input"
        )
    return X


def _stratified_split(
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
    counts = np.bincount(y_index)
    n_classes = np.count_nonzero(counts)
    stratify = (
        y_index if counts[counts > 0].min() >= 2 and min(n_val, n - n_val) >= n_classes else None
    )
    return train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)


def _seed(random_state) -> int:
    """An int seed from scikit-learn's ``random_state``: an int is used as is (so a split can be
    reproduced with the same int); None or a RandomState draws one."""
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _standardizer(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale; constant features keep scale 1 (as StandardScaler does)."""
    mean = rows.mean(axis=0, dtype=np.float64)
    scale = rows.std(axis=0, dtype=np.float64)
    scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean, scale


# --------------------------------------------------------------------------- shared API


class _InvalidParameter(NMTuneError, InvalidParameterError):
    """A parameter outside its constraints: both nmtune's error and scikit-learn's."""


#: Constraints every tuner shares (scikit-learn's ``_parameter_constraints`` vocabulary).
_COMMON_CONSTRAINTS = {
    "device": [str, torch.device],
    "random_state": ["random_state"],
}
_POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]
_NON_NEGATIVE = [Interval(Real, 0, None, closed="left")]


class _FeatureClassifier(ClassifierMixin, BaseEstimator):
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
            raise _InvalidParameter(str(exc)) from None

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
        logits = self._logits(_check_predict_features(self, X))
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (N, K), columns ordered as ``classes_``."""
        return scipy.special.softmax(self._logits(_check_predict_features(self, X)), axis=1)

    def predict(self, X) -> np.ndarray:
        """Predicted labels, shape (N,), drawn from ``classes_``."""
        logits = self._logits(_check_predict_features(self, X))
        return self.classes_[np.argmax(logits, axis=1)]


# --------------------------------------------------------------------------- linear probe


def _logistic_objective(
    theta: np.ndarray, X: torch.Tensor, y: torch.Tensor, n_out: int, lam: float
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy + ``lam/2·‖W‖²`` and its gradient, for scipy's L-BFGS-B.

    ``theta`` packs W (D×P, row-major) then b (P). P = K logit columns, or 1 for two classes:
    the binary model is a softmax over ``[0, x·w + b]``, i.e. scikit-learn's binomial logistic
    regression, so ``C`` means the same as in scikit-learn for any K. The heavy products run
    in float32 on the data's device; the optimiser's state stays float64 on the host.
    """
    d = X.shape[1]
    params = torch.as_tensor(theta, dtype=X.dtype, device=X.device)
    W, b = params[: d * n_out].view(d, n_out), params[d * n_out :]
    logits = torch.addmm(b, X, W)
    if n_out == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    log_p = torch.log_softmax(logits, dim=1)
    loss = -log_p.gather(1, y[:, None]).mean() + 0.5 * lam * W.pow(2).sum()
    residual = log_p.exp_()
    residual[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    residual = residual[:, -n_out:] / y.shape[0]
    grad_W = residual.T.mm(X).T + lam * W  # (Rᵀ X)ᵀ: the fast layout for a row-major X
    grad = torch.cat([grad_W.reshape(-1), residual.sum(dim=0)])
    return float(loss), grad.double().cpu().numpy()


def _fit_logistic(
    X: torch.Tensor, y: torch.Tensor, n_out: int, C: float, theta0: np.ndarray, tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int]:
    """Minimise scikit-learn's ``C·Σ CE + ½‖W‖²`` (scaled by 1/(C·N)) from ``theta0``."""
    result = scipy.optimize.minimize(
        _logistic_objective,
        theta0,
        args=(X, y, n_out, 1.0 / (C * X.shape[0])),
        jac=True,
        method="L-BFGS-B",
        # gtol as in scikit-learn; ftol at float32's resolution, below which the loss is noise.
        options={"maxiter": max_iter, "gtol": tol, "ftol": float(np.finfo(np.float32).eps),
                 "maxls": 50},
    )
    return result.x, int(result.nit)


class LinearProbe(_FeatureClassifier):
    """Linear probe by the CLIP protocol, fast: warm-started L-BFGS along the L2 path.

    Features are standardised (mean and scale over all fit rows). For each C in ``Cs``, from
    strong to weak regularisation, a multinomial logistic regression is fitted on a stratified
    training split by L-BFGS, warm-started from the previous C's solution; the C with the best
    validation accuracy (ties: the stronger regularisation) is refitted on train+val,
    warm-started from its split solution. The objective is scikit-learn's
    ``LogisticRegression(C=C)``; two classes use the binomial form, as scikit-learn does.

    Parameters
    ----------
    Cs : int or array-like of float, default=9
        Inverse L2 strengths to sweep. An int n means ``np.logspace(-4, 4, n)``; a single value
        fits that C on all data with no validation split.
    val_size : float, default=0.2
        Fraction of samples held out (stratified) to choose C.
    tol : float, default=1e-4
        L-BFGS stops when the largest gradient entry is below ``tol``.
    max_iter : int, default=1000
        L-BFGS iterations per C.
    patience : int or None, default=2
        Stop the sweep once this many consecutive Cs fail to beat the best validation accuracy
        so far (None sweeps every C). Weak regularisation on (nearly) separable features is
        where L-BFGS needs the most iterations and where accuracy has stopped improving, so
        this saves most of the time; since ties go to the stronger C, it only changes the
        choice when accuracy recovers after ``patience`` non-improving Cs.
    device : str, default="auto"
        Where the products run: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    random_state : int, RandomState or None, default=None
        Seeds the validation split.

    Attributes
    ----------
    classes_ : ndarray of shape (K,)
    n_features_in_ : int
    coef_ : ndarray of shape (K, D), or (1, D) for two classes
        Weights on the *raw* (unstandardised) features.
    intercept_ : ndarray of shape (K,), or (1,)
    mean_, scale_ : ndarray of shape (D,)
        The standardisation the probe applied.
    Cs_ : ndarray of shape (n_Cs,)
        Swept values, ascending.
    scores_ : ndarray of shape (n_Cs,) or None
        Validation accuracy per C, NaN where ``patience`` ended the sweep before it (None
        without a sweep).
    validation_indices_ : ndarray of shape (n_val,) or None
        Samples held out to choose C (None without a sweep).
    C_ : float
        The chosen C.
    n_iter_ : int
        L-BFGS iterations of the final fit.

    Notes
    -----
    A V×N×D training array contributes all V·N rows; the validation split is drawn over the N
    samples, so no sample's views straddle it.
    """

    _parameter_constraints = {
        "Cs": [*_POSITIVE_INT, "array-like"],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": _POSITIVE_INT,
        "patience": [*_POSITIVE_INT, None],
        **_COMMON_CONSTRAINTS,
    }

    def __init__(
        self,
        Cs: int | list[float] = 9,
        val_size: float = 0.2,
        tol: float = 1e-4,
        max_iter: int = 1000,
        patience: int | None = 2,
        device: str = "auto",
        random_state=None,
    ):
        self.Cs = Cs
        self.val_size = val_size
        self.tol = tol
        self.max_iter = max_iter
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _grid(self) -> np.ndarray:
        if isinstance(self.Cs, Integral):
            if self.Cs < 1:
                raise NMTuneError(f"Cs must be a positive count or a list of C, got {self.Cs}")
            return np.logspace(-4, 4, int(self.Cs))
        grid = np.sort(np.asarray(self.Cs, dtype=np.float64).ravel())
        if grid.size == 0 or not np.all(np.isfinite(grid)) or grid[0] <= 0:
            raise NMTuneError(f"Cs must be positive finite values, got {self.Cs!r}")
        return grid

    def fit(self, X, y) -> LinearProbe:
        """Fit on features ``X`` (N×D or V×N×D) and labels ``y`` (N)."""
        self._validate_params()
        views, self.classes_, y_index = _check_fit_data(X, y)
        self.n_features_in_ = views.shape[2]
        self.Cs_ = self._grid()
        device = resolve_device(self.device)
        if device.type == "cpu":
            tune_cpu_allocator()
        self.mean_, self.scale_ = _standardizer(views.reshape(-1, views.shape[2]))
        std = torch.as_tensor(
            ((views - self.mean_) / self.scale_).astype(np.float32), device=device
        )
        labels = torch.as_tensor(y_index, device=device)
        n_out = 1 if self.classes_.size == 2 else self.classes_.size
        theta = np.zeros((self.n_features_in_ + 1) * n_out)

        self.scores_ = self.validation_indices_ = None
        if self.Cs_.size > 1:
            theta = self._sweep(std, labels, y_index, n_out, theta)
        else:
            self.C_ = float(self.Cs_[0])
        rows, row_labels = std.reshape(-1, std.shape[2]), labels.repeat(std.shape[0])
        theta, self.n_iter_ = _fit_logistic(
            rows, row_labels, n_out, self.C_, theta, self.tol, self.max_iter
        )
        self._set_coefficients(theta, n_out)
        return self

    def _sweep(
        self, std: torch.Tensor, labels: torch.Tensor, y_index: np.ndarray, n_out: int,
        theta: np.ndarray,
    ) -> np.ndarray:
        """Set ``scores_`` and ``C_``; return the chosen C's split solution (the refit's start)."""
        train, self.validation_indices_ = _stratified_split(
            y_index, self.val_size, _seed(self.random_state)
        )
        train, val = (torch.as_tensor(i, device=std.device)
                      for i in (train, self.validation_indices_))
        X_train = std[:, train].reshape(-1, std.shape[2])
        y_train = labels[train].repeat(std.shape[0])
        X_val, y_val = std[0, val].double(), labels[val]
        d = std.shape[2]
        scores, solutions = [], []
        for C in self.Cs_:  # ascending C = strong to weak L2: each solution starts the next
            since_best = len(scores) - 1 - int(np.argmax(scores)) if scores else 0
            if self.patience and since_best >= self.patience:
                break
            theta, _ = _fit_logistic(X_train, y_train, n_out, C, theta, self.tol, self.max_iter)
            W = torch.as_tensor(theta[: d * n_out].reshape(d, n_out), device=std.device)
            scores_val = X_val @ W + torch.as_tensor(theta[d * n_out :], device=std.device)
            pred = (scores_val[:, 0] > 0).long() if n_out == 1 else scores_val.argmax(dim=1)
            scores.append(float((pred == y_val).double().mean()))
            solutions.append(theta)
        self.scores_ = np.full(self.Cs_.size, np.nan)
        self.scores_[: len(scores)] = scores
        best = int(np.argmax(scores))  # first maximum: the strongest regularisation
        self.C_ = float(self.Cs_[best])
        return solutions[best]

    def _set_coefficients(self, theta: np.ndarray, n_out: int) -> None:
        """Fold the standardisation into raw-feature ``coef_`` and ``intercept_``."""
        d = self.n_features_in_
        W, b = theta[: d * n_out].reshape(d, n_out), theta[d * n_out :]
        self.coef_ = (W / self.scale_[:, None]).T
        self.intercept_ = b - self.coef_ @ self.mean_

    def _logits(self, X: np.ndarray) -> np.ndarray:
        scores = X.astype(np.float64) @ self.coef_.T + self.intercept_
        return np.hstack([np.zeros_like(scores), scores]) if scores.shape[1] == 1 else scores


# --------------------------------------------------------------------------- MLP / NMTune


class ResidualMLP(nn.Module):
    """``z = s ⊙ MLP(f) + f`` with ``MLP = Linear(D, r·D) → BatchNorm1d → ReLU → Linear(r·D, D)``,
    ``s`` a learnable 1×D scale initialised to 1, and a linear head on ``z``.

    Parameters
    ----------
    dim : int
        Feature width D.
    hidden_ratio : int
        r, the hidden width as a multiple of D.
    n_classes : int
        Outputs of the head.
    """

    def __init__(self, dim: int, hidden_ratio: int, n_classes: int):
        super().__init__()
        hidden = hidden_ratio * dim
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        self.scale = nn.Parameter(torch.ones(1, dim))
        self.head = nn.Linear(dim, n_classes)

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        """Tuned features, (N, D) -> (N, D)."""
        return self.scale * self.mlp(f) + f

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logits)`` of shapes (N, D) and (N, K)."""
        z = self.transform(f)
        return z, self.head(z)


#: Names of the logged loss terms, in the order :func:`_batch_terms` returns them.
TERMS = ("ce", "mse", "cov", "svd")


def _batch_terms(
    model: ResidualMLP, fa: torch.Tensor, fb: torch.Tensor | None, y: torch.Tensor,
    weights: tuple[float, float, float], top_k: int,
) -> torch.Tensor:
    """The four unweighted loss terms ``(ce, mse, cov, svd)`` of one batch, as a 4-vector.

    ``fa``/``fb`` are the batch's two views (``fb`` None: one view, so view b = view a). Both
    views go through the model together, so BatchNorm sees all 2·B rows. CE is over both
    views; MSE pulls ``z_b`` towards ``f_a``; cov and svd use all rows. A term whose weight is 0
    is computed without a graph: logged, but it costs no backward pass.
    """
    f = fa if fb is None else torch.cat([fa, fb])
    z, logits = model(f)
    z = z.float()
    z_b = z if fb is None else z[fa.shape[0] :]
    ce = F.cross_entropy(logits.float(), y if fb is None else torch.cat([y, y]))
    regularisers = []
    for weight, term in zip(
        weights,
        (
            lambda: consistency_mse(z_b, fa.float()),
            lambda: covariance_penalty(z),
            lambda: top_singular_ratio(z, top_k),
        ),
        strict=True,
    ):
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0):
            regularisers.append(term())
    return torch.stack([ce, *regularisers])


def train_step(
    model: ResidualMLP, optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler, fa: torch.Tensor, fb: torch.Tensor | None,
    y: torch.Tensor, weights: tuple[float, float, float] = (0.0, 0.0, 0.0), top_k: int = 5,
) -> torch.Tensor:
    """One optimiser and schedule step on ``L = ce + w_mse·mse + w_cov·cov − w_svd·svd``.

    The step every MLP/NMTune fit takes, public so that a loop which computes the views' features
    itself (e.g. the authors' encoder-in-the-loop procedure) trains the very same way.

    Parameters
    ----------
    model : ResidualMLP
        In training mode.
    optimizer, schedule : the optimiser over ``model``'s parameters and its per-step schedule
    fa, fb : Tensor of shape (B, D)
        The batch's views a and b (``fb`` None: one view, so view b = view a).
    y : Tensor of shape (B,), int64
        Class indices.
    weights : (float, float, float)
        ``(w_mse, w_cov, w_svd)``; all 0 is the MLP probe.
    top_k : int
        Singular values in the svd term.

    Returns
    -------
    Tensor of shape (4,)
        The unweighted terms ``(ce, mse, cov, svd)`` (:data:`TERMS`), detached.
    """
    with autocast(fa.device):
        terms = _batch_terms(model, fa, fb, y, weights, top_k)
    optimizer.zero_grad(set_to_none=True)
    (terms @ terms.new_tensor(_signed(weights))).backward()
    optimizer.step()
    schedule.step()
    return terms.detach()


def _signed(weights: tuple[float, float, float]) -> list[float]:
    """Coefficients of ``(ce, mse, cov, svd)`` in the loss: svd is maximised, hence negative."""
    return [1.0, weights[0], weights[1], -weights[2]]


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch; a trailing 1-row batch joins the previous one, because
    BatchNorm cannot normalise a single row in training mode."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n], strict=True))


def _fit_memory_bytes(estimator: MLPProbe, n_views: int, n: int, d: int, n_classes: int) -> int:
    """Bytes of float32 a :class:`MLPProbe` / :class:`NMTuneClassifier` fit allocates at peak.

    The r·D hidden layer dominates: its 2·r·D² weights are counted eight times: values,
    gradients, AdamW's two moments, and the step's temporaries (the moment's square root and
    its quotient) with the allocator's slack, which together measured 5.3-7.2 copies of peak
    RSS on CPU (D = 1024); nine with ``validation`` (the best epoch's copy).
    Then the V×N×D training tensor, the D×D covariance of every step (computed for MLPProbe
    too, for the logged terms) with its square and gradient, and the activations of one
    step (two views of a batch) or of one evaluation chunk, whichever is larger.
    """
    hidden = estimator.hidden_ratio * d
    params = 2 * d * hidden + 5 * hidden + 2 * d + (d + 1) * n_classes
    copies = 8 + (estimator.validation is not None)
    step_rows = 2 * min(2 * estimator.batch_size, n)  # a last 1-row batch joins the one before
    # Per row: Linear, BatchNorm and ReLU outputs and their gradients (r·D each), ~10 D-wide.
    activations = max(step_rows, min(n, _PREDICT_CHUNK)) * (6 * hidden + 10 * d)
    return 4 * (copies * params + n_views * n * d + 3 * d * d + activations)


def _check_fit_memory(estimator: MLPProbe, shape: tuple[int, int, int], n_classes: int) -> None:
    """Refuse, before allocating anything, a fit that cannot fit in the device's memory."""
    device = estimator.device_
    available = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
                 else available_memory())
    n_views, n, d = shape
    check_memory(
        _fit_memory_bytes(estimator, n_views, n, d, n_classes),
        f"fitting {type(estimator).__name__} on {n_views}×{n}×{d} features with "
        f"hidden_ratio={estimator.hidden_ratio} (a {estimator.hidden_ratio * d}-wide hidden "
        f"layer) on {device}",
        "lower hidden_ratio, project the features to fewer dimensions first (e.g. "
        "sklearn.decomposition.PCA), or pass a device with more memory (device='cuda')",
        available,
    )


class MLPProbe(_FeatureClassifier):
    """MLP probe: :class:`ResidualMLP` and its head trained with cross-entropy alone.

    This is :class:`NMTuneClassifier` with the three regulariser weights fixed at 0, which is
    exactly how the paper's MLP baseline differs from NMTune. The regularisers are still
    evaluated (without gradients) and logged in ``history_``, so their magnitudes compare.

    Parameters
    ----------
    hidden_ratio : int, default=4
        Hidden width of the MLP as a multiple of D.
    lr : float, default=1e-3
        AdamW peak learning rate, decayed per step to 0 on a cosine.
    weight_decay : float, default=1e-4
    batch_size : int, default=64
        Samples per step (each contributes one row per view used).
    epochs : int, default=30
    standardize : bool, default=False
        Standardise features (mean and scale over all fit rows) before the MLP;
        ``embed`` then returns tuned features in the standardised space. Off by default,
        as the authors feed raw features, and raw did as well or better on backbone features
        (docs/benchmarks.md). Turn it on for features far from unit scale (raw pixels, say):
        the covariance term grows with the fourth power of the scale while CE does not, so
        the regularisers' balance follows the scale.
    validation : float or None, default=None
        None: the authors' protocol, train on everything and keep the last epoch. A fraction:
        hold out a stratified validation split, evaluate it after every epoch and keep the
        weights of the best epoch (first best on ties).
    device : str, default="auto"
    random_state : int, RandomState or None, default=None
        Seeds initialisation, batch order, view choice and the validation split; a fixed seed
        gives identical results on CPU.
    verbose : bool, default=False
        Show a progress bar over epochs.

    Attributes
    ----------
    classes_ : ndarray of shape (K,)
    n_features_in_ : int
    model_ : ResidualMLP
        The trained module (eval mode), on ``device_``.
    device_ : torch.device
    mean_, scale_ : ndarray of shape (D,) or None
        The standardisation, when ``standardize``.
    history_ : list of dict
        One dict per epoch: ``epoch``, ``loss`` (weighted total) and the unweighted per-step
        means of ``ce``, ``mse``, ``cov``, ``svd``; ``val_accuracy`` with ``validation``.
    best_epoch_ : int
        Epoch (1-based) whose weights were kept.
    validation_indices_ : ndarray of shape (n_val,) or None
        Samples held out for epoch selection (None without ``validation``).
    """

    #: Regulariser weights and SVD top-k; NMTuneClassifier makes them parameters.
    w_mse = w_cov = w_svd = 0.0
    top_k = 5

    _parameter_constraints = {
        "hidden_ratio": _POSITIVE_INT,
        "lr": _NON_NEGATIVE,
        "weight_decay": _NON_NEGATIVE,
        "batch_size": _POSITIVE_INT,
        "epochs": _POSITIVE_INT,
        "standardize": ["boolean"],
        "validation": [Interval(Real, 0, 1, closed="neither"), None],
        "verbose": ["verbose"],
        **_COMMON_CONSTRAINTS,
    }

    def __init__(
        self,
        hidden_ratio: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        epochs: int = 30,
        standardize: bool = False,
        validation: float | None = None,
        device: str = "auto",
        random_state=None,
        verbose: bool = False,
    ):
        self.hidden_ratio = hidden_ratio
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.standardize = standardize
        self.validation = validation
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y) -> MLPProbe:
        """Train on features ``X`` (N×D or V×N×D) and labels ``y`` (N).

        With V >= 2 views each step draws two distinct views at random (seeded): view a is
        the consistency target, view b is tuned towards it.
        """
        self._validate_params()
        views, self.classes_, y_index = _check_fit_data(X, y)
        self.n_features_in_ = views.shape[2]
        self.device_ = resolve_device(self.device)
        _check_fit_memory(self, views.shape, self.classes_.size)
        if self.device_.type == "cpu":
            tune_cpu_allocator()
        self.mean_ = self.scale_ = None
        if self.standardize:
            self.mean_, self.scale_ = _standardizer(views.reshape(-1, views.shape[2]))
            views = (views - self.mean_) / self.scale_
        seed = _seed(self.random_state)
        train, self.validation_indices_ = np.arange(y_index.shape[0]), None
        if self.validation is not None:
            train, self.validation_indices_ = _stratified_split(
                y_index, float(self.validation), seed
            )

        data = torch.tensor(views, dtype=torch.float32, device=self.device_)
        labels = torch.as_tensor(y_index, device=self.device_)
        # Seed a private RNG stream: an estimator must not reset its caller's global RNGs.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ResidualMLP(self.n_features_in_, self.hidden_ratio, self.classes_.size)
        self.model_ = model.to(self.device_)
        generator = torch.Generator().manual_seed(seed)
        self._train(data, labels, torch.as_tensor(train), self.validation_indices_, generator)
        self.model_.eval()
        return self

    def _train(
        self, data: torch.Tensor, labels: torch.Tensor, train: torch.Tensor,
        val: np.ndarray | None, generator: torch.Generator,
    ) -> None:
        """AdamW with per-step cosine decay; fills ``history_`` and ``best_epoch_``."""
        weights = (self.w_mse, self.w_cov, self.w_svd)
        bounds = _batch_bounds(train.shape[0], self.batch_size)
        optimizer = torch.optim.AdamW(
            self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=self.epochs * len(bounds)
        )
        n_views = data.shape[0]
        self.history_, best_state, best_score = [], None, -1.0
        for epoch in tqdm(range(1, self.epochs + 1), disable=not self.verbose, desc="epochs"):
            self.model_.train()
            order = train[torch.randperm(train.shape[0], generator=generator)].to(data.device)
            sums = torch.zeros(len(TERMS), device=data.device)
            for start, stop in bounds:
                idx = order[start:stop]
                a, b = (
                    torch.randperm(n_views, generator=generator)[:2].tolist()
                    if n_views > 1 else (0, 0)
                )
                sums += train_step(
                    self.model_, optimizer, schedule, data[a, idx],
                    None if a == b else data[b, idx], labels[idx], weights, self.top_k,
                )
            means = (sums / len(bounds)).tolist()
            record = {"epoch": epoch, "loss": float(np.dot(means, _signed(weights))),
                      **dict(zip(TERMS, means, strict=True))}
            if val is not None:
                record["val_accuracy"] = self._accuracy(data[0, val], labels[val])
                if record["val_accuracy"] > best_score:
                    best_score, self.best_epoch_ = record["val_accuracy"], epoch
                    best_state = copy.deepcopy(self.model_.state_dict())
            self.history_.append(record)
        if best_state is None:
            self.best_epoch_ = self.epochs
        else:
            self.model_.load_state_dict(best_state)

    def _accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        self.model_.eval()
        with torch.inference_mode(), autocast(features.device):
            correct = sum(
                int((self.model_(chunk)[1].argmax(dim=1) == target).sum())
                for chunk, target in zip(
                    features.split(_PREDICT_CHUNK), labels.split(_PREDICT_CHUNK), strict=True
                )
            )
        return correct / labels.shape[0]

    def _forward_numpy(self, X: np.ndarray, output: int) -> np.ndarray:
        """Output ``output`` of the model (0: z, 1: logits) for N×D raw features, float64."""
        if self.mean_ is not None:
            X = (X - self.mean_) / self.scale_
        features = torch.tensor(X, dtype=torch.float32, device=self.device_)
        self.model_.eval()
        with torch.inference_mode(), autocast(self.device_):
            parts = [self.model_(chunk)[output].float() for chunk in features.split(_PREDICT_CHUNK)]
        return torch.cat(parts).double().cpu().numpy()

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self._forward_numpy(X, 1)

    def embed(self, X) -> np.ndarray:
        """Tuned features ``z = s ⊙ MLP(f) + f`` (named like ``Backbone.embed``; not
        ``transform``, which would make scikit-learn treat the classifier as a transformer).

        Parameters
        ----------
        X : array-like of shape (N, D), or (V, N, D) read as view 0

        Returns
        -------
        ndarray of shape (N, D)
            In the standardised space when ``standardize`` is on.
        """
        return self._forward_numpy(_check_predict_features(self, X), 0)


class NMTuneClassifier(MLPProbe):
    """NMTune: the MLP probe trained with ``L = CE + w_mse·mse + w_cov·cov − w_svd·svd``.

    The terms are those of :mod:`nmtune.objective` (docs/design.md §3.1): consistency of the tuned
    view b with the pre-trained view a, the VICReg covariance penalty over all rows, and the
    mean top-``top_k`` singular-value ratio of ``z`` (maximised). Defaults are the authors'
    weights. Other parameters and attributes are those of :class:`MLPProbe`.

    Parameters
    ----------
    w_mse, w_cov, w_svd : float, default=1.0, 0.04, 0.001
    top_k : int, default=5
    """

    _parameter_constraints = {
        **MLPProbe._parameter_constraints,
        "w_mse": _NON_NEGATIVE,
        "w_cov": _NON_NEGATIVE,
        "w_svd": _NON_NEGATIVE,
        "top_k": _POSITIVE_INT,
    }

    def __init__(
        self,
        w_mse: float = AUTHOR_WEIGHTS["mse"],
        w_cov: float = AUTHOR_WEIGHTS["cov"],
        w_svd: float = AUTHOR_WEIGHTS["svd"],
        top_k: int = 5,
        hidden_ratio: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        epochs: int = 30,
        standardize: bool = False,
        validation: float | None = None,
        device: str = "auto",
        random_state=None,
        verbose: bool = False,
    ):
        super().__init__(
            hidden_ratio=hidden_ratio, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
            epochs=epochs, standardize=standardize, validation=validation, device=device,
            random_state=random_state, verbose=verbose,
        )
        self.w_mse = w_mse
        self.w_cov = w_cov
        self.w_svd = w_svd
        self.top_k = top_k
