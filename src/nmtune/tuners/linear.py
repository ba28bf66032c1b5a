"""The linear probe by the CLIP protocol: standardise, L-BFGS multinomial logistic regression,
a log-spaced sweep of the L2 strength on a stratified validation split, refit on train+val
with the chosen strength."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import scipy.optimize
import torch
from sklearn.utils._param_validation import Interval

from .._torch import resolve_device, tune_cpu_allocator
from .._validation import NMTuneError
from .base import (
    COMMON_CONSTRAINTS,
    POSITIVE_INT,
    FeatureClassifier,
    check_fit_data,
    seed_from,
    standardizer,
    stratified_split,
)

__all__ = ["LinearProbe"]


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


class LinearProbe(FeatureClassifier):
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
        "Cs": [*POSITIVE_INT, "array-like"],
        "val_size": [Interval(Real, 0, 1, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": POSITIVE_INT,
        "patience": [*POSITIVE_INT, None],
        **COMMON_CONSTRAINTS,
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
        views, self.classes_, y_index = check_fit_data(X, y)
        self.n_features_in_ = views.shape[2]
        self.Cs_ = self._grid()
        device = resolve_device(self.device)
        if device.type == "cpu":
            tune_cpu_allocator()
        self.mean_, self.scale_ = standardizer(views.reshape(-1, views.shape[2]))
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
        train, self.validation_indices_ = stratified_split(
            y_index, self.val_size, seed_from(self.random_state)
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


