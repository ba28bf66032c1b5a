"""The residual-MLP family: :class:`NMTuneClassifier` and :class:`MLPProbe`.

:class:`ResidualMLP` is ``z = s ⊙ MLP(f) + f`` with a linear head; :func:`train_step` is one
optimiser step on NMTune's loss (docs/design.md §3.1), whose terms :mod:`nmtune.objective`
names and computes. :class:`NMTuneClassifier` owns the training loop; :class:`MLPProbe` is it
with the three regulariser weights fixed at 0, the paper's MLP baseline.
"""

from __future__ import annotations

import copy
import math
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn
from tqdm.auto import tqdm

from .._torch import autocast, resolve_device, tune_cpu_allocator
from .._validation import NMTuneError, available_memory, check_memory
from ..objective import AUTHOR_WEIGHTS, REGULARISERS, TERMS, loss_coefficients, nmtune_terms
from .base import (
    COMMON_CONSTRAINTS,
    NON_NEGATIVE,
    POSITIVE_INT,
    FeatureClassifier,
    check_fit_data,
    check_predict_features,
    seed_from,
    standardizer,
    stratified_split,
)
from .linear import LinearProbe

__all__ = [
    "PROTOCOLS", "MLPProbe", "NMTuneClassifier", "ResidualMLP", "batch_bounds",
    "fit_memory_bytes", "train_step",
]

#: Rows per forward pass at predict time: bounds memory for the r·D-wide hidden layer.
_PREDICT_CHUNK = 4096
#: A warm-started fit's epochs as a fraction of those of the fit it continues.
WARM_EPOCHS = 0.25


class ResidualMLP(nn.Module):
    """``z = s ⊙ MLP(f) + f`` with ``MLP = Linear(D, r·D) → BatchNorm1d → ReLU → Linear(r·D, D)``,
    ``s`` a learnable 1×D scale, and a linear head on ``z``.

    Parameters
    ----------
    dim : int
        Feature width D.
    hidden_ratio : int
        r, the hidden width as a multiple of D.
    n_classes : int
        Outputs of the head.
    scale_init : float, default=1.0
        Initial value of every entry of ``s``: 1 is the authors' model; 0 starts at ``z = f``.
    """

    def __init__(self, dim: int, hidden_ratio: int, n_classes: int, scale_init: float = 1.0):
        super().__init__()
        hidden = hidden_ratio * dim
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )
        self.scale = nn.Parameter(torch.full((1, dim), float(scale_init)))
        self.head = nn.Linear(dim, n_classes)

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        """Tuned features, (N, D) -> (N, D)."""
        return self.scale * self.mlp(f) + f

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logits)`` of shapes (N, D) and (N, K)."""
        z = self.transform(f)
        return z, self.head(z)


def _batch_terms(
    model: ResidualMLP, fa: torch.Tensor, fb: torch.Tensor | None, y: torch.Tensor,
    weights: tuple[float, float, float], top_k: int, unweighted: bool = True,
    units: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The unweighted loss terms of one batch (:data:`~nmtune.objective.TERMS`), as a vector.

    ``fa``/``fb`` are the batch's two views (``fb`` None: one view, so view b = view a). Both
    views go through the model together, so BatchNorm sees all 2·B rows. CE is over both
    views; the regularisers are :func:`~nmtune.objective.nmtune_terms` of all rows (NaN for
    those of weight 0 unless ``unweighted``), on ``z·multiplier + offset`` and
    ``fa·multiplier + offset`` when ``units`` is ``(offset, multiplier)``.
    """
    f = fa if fb is None else torch.cat([fa, fb])
    z, logits = model(f)
    ce = F.cross_entropy(logits.float(), y if fb is None else torch.cat([y, y]))
    z, fa = z.float(), fa.float()
    if units is not None:
        z, fa = z * units[1] + units[0], fa * units[1] + units[0]
    return torch.stack([ce, *nmtune_terms(z, fa, top_k, weights, unweighted)])


def train_step(
    model: ResidualMLP, optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler, fa: torch.Tensor, fb: torch.Tensor | None,
    y: torch.Tensor, weights: tuple[float, float, float] = (0.0, 0.0, 0.0), top_k: int = 5,
    unweighted: bool = True, units: tuple[torch.Tensor, torch.Tensor] | None = None,
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
    unweighted : bool, default=True
        Evaluate (for the log) the terms of weight 0 too; False leaves them NaN and skips
        their cost.
    units : (Tensor, Tensor) or None
        ``(offset, multiplier)`` of shape (D,) each: the regularisers are computed on
        ``z·multiplier + offset`` (``raw_regularisers``: the features' own units, capped at unit
        scale). None: on the model's units.

    Returns
    -------
    Tensor of shape (4,)
        The unweighted terms ``(ce, mse, cov, svd)`` (:data:`~nmtune.objective.TERMS`),
        detached.
    """
    with autocast(fa.device):
        terms = _batch_terms(model, fa, fb, y, weights, top_k, unweighted, units)
    optimizer.zero_grad(set_to_none=True)
    (terms @ terms.new_tensor(loss_coefficients(weights))).backward()
    optimizer.step()
    schedule.step()
    return terms.detach()


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch; a trailing 1-row batch joins the previous one, because
    BatchNorm cannot normalise a single row in training mode."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n], strict=True))


def fit_memory_bytes(
    estimator: NMTuneClassifier, n_views: int, n: int, d: int, n_classes: int
) -> int:
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


def _check_fit_memory(
    estimator: NMTuneClassifier, shape: tuple[int, int, int], n_classes: int
) -> None:
    """Refuse, before allocating anything, a fit that cannot fit in the device's memory."""
    device = estimator.device_
    available = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
                 else available_memory())
    n_views, n, d = shape
    check_memory(
        fit_memory_bytes(estimator, n_views, n, d, n_classes),
        f"fitting {type(estimator).__name__} on {n_views}×{n}×{d} features with "
        f"hidden_ratio={estimator.hidden_ratio} (a {estimator.hidden_ratio * d}-wide hidden "
        f"layer) on {device}",
        "lower hidden_ratio, project the features to fewer dimensions first (e.g. "
        "sklearn.decomposition.PCA), or pass a device with more memory (device='cuda')",
        available,
    )


#: The named presets of the settings a ``None`` leaves to ``protocol``. "authors" is the
#: paper's procedure (raw features, scale 1, random head, 30 epochs, no feature-space views).
#: "default" standardises the features, starts from the linear probe (z = f and the probe's
#: head) and takes at least 300 steps: the start that passes scikit-learn's check_estimator;
#: docs/results.md ("Tuner benchmark") has what each lever measured.
PROTOCOLS = {
    "authors": {"standardize": False, "scale_aware": False, "raw_regularisers": False,
                "scale_init": 1.0, "head_init": "random", "min_steps": 0,
                "feature_augment": "none"},
    "default": {"standardize": True, "scale_aware": False, "raw_regularisers": True,
                "scale_init": 0.0, "head_init": "probe", "min_steps": 300,
                "feature_augment": "none"},
}

_MLP_CONSTRAINTS = {
    "protocol": [StrOptions(set(PROTOCOLS))],
    "scale_aware": ["boolean", None],
    "raw_regularisers": ["boolean", None],
    "scale_init": [Real, None],
    "head_init": [StrOptions({"random", "probe"}), None],
    "min_steps": [Interval(Integral, 0, None, closed="left"), None],
    "feature_augment": [StrOptions({"none", "noise", "dropout"}), None],
    "augment_strength": [Interval(Real, 0, 1, closed="neither")],
    "hidden_ratio": POSITIVE_INT,
    "lr": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "batch_size": POSITIVE_INT,
    "epochs": POSITIVE_INT,
    "standardize": ["boolean", None],
    "validation": [Interval(Real, 0, 1, closed="neither"), None],
    "n_iter_no_change": [*POSITIVE_INT, None],
    "verbose": ["verbose"],
    **COMMON_CONSTRAINTS,
}


def _head_from_probe(probe: LinearProbe, mean: np.ndarray | None,
                     scale: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Head weight (K×D) and bias (K) that reproduce ``probe``'s logits on ``z = f``, in the
    model's input space (standardised when ``mean``/``scale`` are given)."""
    W, b = probe.coef_, probe.intercept_
    if W.shape[0] == 1:  # binomial: logits [0, x·w + b]
        W, b = np.vstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
    if mean is not None:  # x = x_std·scale + mean
        W, b = W * scale, b + W @ mean
    return torch.tensor(W, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


class NMTuneClassifier(FeatureClassifier):
    """NMTune: :class:`ResidualMLP` and its head trained with
    ``L = CE + w_mse·mse + w_cov·cov − w_svd·svd``.

    The terms are those of :mod:`nmtune.objective` (docs/design.md §3.1): consistency of the
    tuned view b with the pre-trained view a, the VICReg covariance penalty over all rows, and
    the mean top-``top_k`` singular-value ratio of ``z`` (maximised). The weights default to
    the authors'.

    Seven settings (the levers) default to None, which takes them from ``protocol``
    (:data:`PROTOCOLS`); set one to override the preset.

    Parameters
    ----------
    w_mse, w_cov, w_svd : float, default=1.0, 0.04, 0.001
        Regulariser weights (:data:`nmtune.objective.AUTHOR_WEIGHTS`).
    top_k : int, default=5
        Singular values in the svd term.
    protocol : {"default", "authors"}, default="default"
        The preset of the levers below. "authors" replays the paper's procedure.
    scale_init : float or None
        Initial residual scale ``s``: 1 (authors) or 0, so that ``z = f`` at the start.
    head_init : {"random", "probe"} or None
        "probe": fit a :class:`~nmtune.tuners.LinearProbe` on the training rows first and
        start the head from its solution (probe-then-tune); with ``scale_init=0`` the model
        then starts as the linear probe.
    min_steps : int or None
        Optimiser steps at least: ``epochs`` is raised until the fit takes this many steps,
        so small training sets are not underfitted (0: exactly ``epochs``).
    scale_aware : bool or None
        Divide the features by one number σ, σ² their mean per-feature variance, before the
        model (ignored with ``standardize``): the regulariser weights then mean on features of
        any scale what they mean on unit-variance ones (the covariance term grows with the
        fourth power of the scale, CE does not; the consistency and spectrum terms are
        scale-free), and the residual branch, whose output is of order 1, is on the
        features' scale. Unlike ``standardize`` it keeps the features' relative scales.
    raw_regularisers : bool or None
        Compute the three regularisers on the tuned features mapped back to the features'
        own units, each feature shrunk to at most unit scale (``(z·scale_ + mean_) /
        max(scale_, 1)``), so that ``standardize`` (or ``scale_aware``) only preconditions the
        model. Without it the covariance term is taken on unit-variance features, where the
        authors' weight bites far harder than on, e.g., 0.05-scale text embeddings; the cap
        keeps it from exploding on large-scale ones (it grows with the fourth power of the
        scale).
    feature_augment : {"none", "noise", "dropout"} or None
        Views for single-view data: each step's view b is view a plus Gaussian noise of
        ``augment_strength`` times each feature's standard deviation ("noise"), or view a with
        a fraction ``augment_strength`` of its entries zeroed and the rest rescaled
        ("dropout"). Unused when ``X`` holds several views.
    augment_strength : float, default=0.1
    hidden_ratio : int, default=4
        Hidden width of the MLP as a multiple of D.
    lr : float, default=1e-3
        AdamW peak learning rate, decayed per step to 0 on a cosine.
    weight_decay : float, default=1e-4
    batch_size : int, default=64
        Samples per step (each contributes one row per view used).
    epochs : int, default=30
    standardize : bool or None
        Standardise features (mean and scale over all fit rows) before the MLP;
        ``embed`` then returns tuned features in the standardised space. The authors feed
        raw features; the default protocol standardises, which puts the residual branch on
        the features' scale (an L2-normalised 384-d embedding has entries ~0.05, the MLP's
        output ~1) and the probe's head on well-conditioned inputs.
    validation : float or None, default=None
        None: train on everything and keep the last epoch. A fraction: hold out a stratified
        validation split, evaluate it after every epoch and keep the weights of the best epoch
        (first best on ties).
    n_iter_no_change : int or None, default=None
        With ``validation``: stop once this many epochs in a row fail to beat the best
        validation accuracy (early stopping). None trains every epoch.
    device : str, default="auto"
    random_state : int, RandomState or None, default=None
        Seeds initialisation, batch order, view choice, augmentation and the validation split;
        a fixed seed gives identical results on CPU.
    verbose : bool, default=False
        Show a progress bar over epochs.

    Attributes
    ----------
    classes_ : ndarray of shape (K,)
    n_features_in_ : int
    model_ : ResidualMLP
        The trained module (eval mode), on ``device_``.
    device_ : torch.device
    settings_ : dict
        The levers as the fit resolved them (``protocol`` filled in).
    weights_ : tuple of float
        The regulariser weights the loss used.
    mean_, scale_ : ndarray of shape (D,) or None
        What the model's input is, ``(X - mean_) / scale_``: per feature with
        ``standardize``, 0 and σ with ``scale_aware``, None otherwise.
    history_ : list of dict
        One dict per epoch: ``epoch``, ``loss`` (weighted total) and the unweighted per-step
        means of ``ce``, ``mse``, ``cov``, ``svd`` (a term of weight 0, which the loss does not
        use, is its value on the epoch's last batch); ``val_accuracy`` with ``validation``.
    n_steps_ : int
        Optimiser steps taken.
    best_epoch_ : int
        Epoch (1-based) whose weights were kept.
    validation_indices_ : ndarray of shape (n_val,) or None
        Samples held out for epoch selection (None without ``validation``).
    """

    _parameter_constraints = {
        **_MLP_CONSTRAINTS,
        **{f"w_{term.name}": NON_NEGATIVE for term in REGULARISERS},
        "top_k": POSITIVE_INT,
    }

    def __init__(
        self,
        w_mse: float = AUTHOR_WEIGHTS["mse"],
        w_cov: float = AUTHOR_WEIGHTS["cov"],
        w_svd: float = AUTHOR_WEIGHTS["svd"],
        top_k: int = 5,
        protocol: str = "default",
        scale_aware: bool | None = None,
        raw_regularisers: bool | None = None,
        scale_init: float | None = None,
        head_init: str | None = None,
        min_steps: int | None = None,
        feature_augment: str | None = None,
        augment_strength: float = 0.1,
        hidden_ratio: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        epochs: int = 30,
        standardize: bool | None = None,
        validation: float | None = None,
        n_iter_no_change: int | None = None,
        device: str = "auto",
        random_state=None,
        verbose: bool = False,
    ):
        self.w_mse = w_mse
        self.w_cov = w_cov
        self.w_svd = w_svd
        self.top_k = top_k
        MLPProbe.__init__(
            self, protocol, scale_aware, raw_regularisers, scale_init, head_init, min_steps,
            feature_augment,
            augment_strength, hidden_ratio, lr, weight_decay, batch_size, epochs, standardize,
            validation, n_iter_no_change, device, random_state, verbose,
        )

    def _settings(self) -> dict:
        """The levers: each one set, else the protocol's."""
        preset = PROTOCOLS[self.protocol]
        return {name: preset[name] if getattr(self, name, None) is None else getattr(self, name)
                for name in preset}

    def _regularisation(self) -> tuple[tuple[float, ...], int]:
        """The regulariser weights (in :data:`~nmtune.objective.REGULARISERS` order) as given,
        and the svd term's top-k that a fit trains with."""
        return tuple(getattr(self, f"w_{term.name}") for term in REGULARISERS), self.top_k

    def fit(self, X, y) -> NMTuneClassifier:
        """Train on features and labels.

        With V >= 2 views each step draws two distinct views at random (seeded): view a is
        the consistency target, view b is tuned towards it.

        Parameters
        ----------
        X : array-like of shape (N, D) or (V, N, D)
        y : array-like of shape (N,)

        Returns
        -------
        self
        """
        return self._fit(X, y)

    def _fit(self, X, y, probe: LinearProbe | None = None,
             warm_start: NMTuneClassifier | None = None) -> NMTuneClassifier:
        """``fit``, with ``probe`` (a :class:`LinearProbe` fitted on the same raw training rows)
        reused for ``head_init="probe"`` instead of fitting one: the auto tuner shares its LP
        fits. Without ``validation`` only, since the probe saw every row.

        ``warm_start``, an estimator of the same settings fitted on part of these rows, makes
        this a continuation: its model, input scaling and classes, trained further for
        :data:`WARM_EPOCHS` of its epochs (at least one) on a fresh cosine schedule. The auto
        tuner refits its winner this way on the whole training set."""
        self._validate_params()
        views, self.classes_, y_index = check_fit_data(X, y)
        self.n_features_in_ = views.shape[2]
        self.settings_ = self._settings()
        self.device_ = resolve_device(self.device)
        _check_fit_memory(self, views.shape, self.classes_.size)
        if self.device_.type == "cpu":
            tune_cpu_allocator()
        seed = seed_from(self.random_state)
        train, self.validation_indices_ = np.arange(y_index.shape[0]), None
        if self.validation is not None:
            train, self.validation_indices_ = stratified_split(
                y_index, float(self.validation), seed
            )
            probe = None  # a shared probe saw the validation rows
        if self.batch_size == 1 and views.shape[0] == 1 and (
                self.settings_["feature_augment"] == "none"):
            raise NMTuneError(
                "batch_size=1 on single-view features gives BatchNorm one row per step, which "
                "it cannot normalise; use batch_size >= 2"
            )
        if warm_start is not None and not np.array_equal(warm_start.classes_, self.classes_):
            raise NMTuneError("a warm start must have seen every class of the training set")
        if self.settings_["head_init"] == "probe" and probe is None and warm_start is None:
            probe = LinearProbe(device=self.device, random_state=seed).fit(
                views[:, train], y_index[train])
        self.mean_, self.scale_ = (self._input_scaling(views) if warm_start is None
                                   else (warm_start.mean_, warm_start.scale_))
        if self.mean_ is not None:
            views = (views - self.mean_) / self.scale_
        self.weights_ = self._regularisation()[0]
        units = None
        if self.settings_["raw_regularisers"] and self.mean_ is not None:
            # Raw units, each feature shrunk to at most unit scale (x / max(scale, 1)): the
            # covariance term grows with the fourth power of the scale, and on 0-16 pixel
            # values raw units cost NMTune 3.5 points (on ×100 pixels 16).
            shrink = np.maximum(self.scale_, 1.0)
            units = tuple(torch.tensor(a, dtype=torch.float32, device=self.device_)
                          for a in (self.mean_ / shrink, self.scale_ / shrink))

        data = torch.tensor(views, dtype=torch.float32, device=self.device_)
        labels = torch.as_tensor(y_index, device=self.device_)
        # Seed a private RNG stream: an estimator must not reset its caller's global RNGs.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ResidualMLP(self.n_features_in_, self.hidden_ratio, self.classes_.size,
                                self.settings_["scale_init"])
        epochs = None
        if warm_start is not None:
            model.load_state_dict(warm_start.model_.state_dict())
            epochs = max(1, math.ceil(WARM_EPOCHS * len(warm_start.history_)))
        elif self.settings_["head_init"] == "probe":
            with torch.no_grad():
                model.head.weight[:], model.head.bias[:] = _head_from_probe(
                    probe, self.mean_, self.scale_)
        self.model_ = model.to(self.device_)
        generator = torch.Generator().manual_seed(seed)
        self._train(data, labels, torch.as_tensor(train), self.validation_indices_, generator,
                    units, epochs)
        self.model_.eval()
        return self

    def _input_scaling(self, views: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(mean, scale)`` of the model's input ``(X - mean) / scale`` (None: raw X)."""
        rows = views.reshape(-1, views.shape[2])
        if self.settings_["standardize"]:
            return standardizer(rows)
        if not self.settings_["scale_aware"]:
            return None, None
        sigma2 = float(rows.var(axis=0, dtype=np.float64).mean())
        sigma = np.sqrt(sigma2) if sigma2 > 0 else 1.0  # constant features: nothing to rescale
        return np.zeros(rows.shape[1]), np.full(rows.shape[1], sigma)

    def _view_b(self, fa: torch.Tensor, std: torch.Tensor | None,
                generator: torch.Generator) -> torch.Tensor | None:
        """A feature-space view of a single-view batch (None: no augmentation)."""
        kind, p = self.settings_["feature_augment"], float(self.augment_strength)
        if kind == "noise":
            return fa + p * std * torch.randn(fa.shape, generator=generator).to(fa.device)
        if kind == "dropout":
            keep = torch.rand(fa.shape, generator=generator).to(fa.device) >= p
            return fa * keep / (1.0 - p)
        return None

    def _train(
        self, data: torch.Tensor, labels: torch.Tensor, train: torch.Tensor,
        val: np.ndarray | None, generator: torch.Generator,
        units: tuple[torch.Tensor, torch.Tensor] | None, epochs: int | None = None,
    ) -> None:
        """AdamW with per-step cosine decay; fills ``history_``, ``n_steps_``, ``best_epoch_``.
        ``units`` as for :func:`train_step`; ``epochs`` None: as the settings say."""
        _, top_k = self._regularisation()
        weights = self.weights_
        bounds = batch_bounds(train.shape[0], self.batch_size)
        if epochs is None:
            epochs = max(self.epochs, math.ceil(self.settings_["min_steps"] / len(bounds)))
        optimizer = torch.optim.AdamW(
            self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay,
            # One fused kernel per step instead of a loop over parameters: 25-30 % of a CPU fit
            # at D = 64 (docs/benchmarks.md).
            fused=self.device_.type in ("cpu", "cuda"),
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs * len(bounds)
        )
        n_views = data.shape[0]
        std = data[0, train.to(data.device)].std(dim=0) if train.shape[0] > 1 else None
        if std is None and self.settings_["feature_augment"] == "noise":
            std = torch.ones(data.shape[2], device=data.device)
        self.history_, best_state, best_score, self.n_steps_ = [], None, -1.0, 0
        unlogged = torch.tensor([False, *(w == 0 for w in weights)], device=data.device)
        for epoch in tqdm(range(1, epochs + 1), disable=not self.verbose, desc="epochs"):
            self.model_.train()
            order = train[torch.randperm(train.shape[0], generator=generator)].to(data.device)
            sums = torch.zeros(len(TERMS), device=data.device)
            for step, (start, stop) in enumerate(bounds, start=1):
                idx = order[start:stop]
                a, b = (
                    torch.randperm(n_views, generator=generator)[:2].tolist()
                    if n_views > 1 else (0, 0)
                )
                fa = data[a, idx]
                fb = data[b, idx] if a != b else self._view_b(fa, std, generator)
                # Terms of weight 0 are only logged, so they are evaluated on the epoch's
                # last batch alone: on every step their SVD made an MLP probe fit ~1.7x slower.
                try:
                    terms = train_step(self.model_, optimizer, schedule, fa, fb, labels[idx],
                                       weights, top_k, unweighted=step == len(bounds),
                                       units=units)
                except torch.linalg.LinAlgError as exc:  # the svd term of non-finite z
                    self._diverged(epoch, data, str(exc))
                sums += torch.where(unlogged, 0.0, terms)
            self.n_steps_ += len(bounds)
            means = torch.where(unlogged, terms, sums / len(bounds)).tolist()
            # The loss of the terms it uses: a logged weight-0 term that overflows is not in it.
            used = [(m, c) for m, c in zip(means, loss_coefficients(weights), strict=True) if c]
            if not all(math.isfinite(m) for m, _ in used):
                self._diverged(epoch, data, "loss terms " + ", ".join(
                    f"{t}={m}" for t, m, c in zip(TERMS, means, loss_coefficients(weights),
                                                  strict=True) if c))
            record = {"epoch": epoch, "loss": float(sum(m * c for m, c in used)),
                      **dict(zip(TERMS, means, strict=True))}
            self.history_.append(record)
            if val is None:
                continue
            record["val_accuracy"] = self._accuracy(data[0, val], labels[val])
            if record["val_accuracy"] > best_score:
                best_score, self.best_epoch_ = record["val_accuracy"], epoch
                best_state = copy.deepcopy(self.model_.state_dict())
            elif self.n_iter_no_change and epoch - self.best_epoch_ >= self.n_iter_no_change:
                break
        if best_state is None:
            self.best_epoch_ = epochs
        else:
            self.model_.load_state_dict(best_state)

    def _diverged(self, epoch: int, data: torch.Tensor, what: str) -> None:
        """Raise: training produced non-finite values in ``epoch``."""
        hint = "lower lr"
        if self.mean_ is None:  # raw features: their scale enters the covariance term as x⁴
            hint += (f", or standardise the features (largest |x| = "
                     f"{float(data.abs().amax()):.3g}; standardize=True)")
        raise NMTuneError(f"{type(self).__name__} training diverged in epoch {epoch} ({what}); "
                          f"{hint}")

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
        return self._forward_numpy(check_predict_features(self, X), 0)


class MLPProbe(NMTuneClassifier):
    """MLP probe: :class:`ResidualMLP` and its head trained with cross-entropy alone.

    This is :class:`NMTuneClassifier` with the three regulariser weights fixed at 0, which is
    exactly how the paper's MLP baseline differs from NMTune. The regularisers are still
    evaluated on each epoch's last batch (without gradients, svd with top-k 5) and logged in
    ``history_``, so their magnitudes compare.

    Parameters
    ----------
    protocol, scale_aware, raw_regularisers, scale_init, head_init, min_steps, feature_augment,
    augment_strength
        The preset and the levers, as for :class:`NMTuneClassifier`.
    hidden_ratio, lr, weight_decay, batch_size, epochs
        The training settings, as for :class:`NMTuneClassifier`.
    standardize, validation, n_iter_no_change, device, random_state, verbose
        As for :class:`NMTuneClassifier`.

    Attributes
    ----------
    Those of :class:`NMTuneClassifier`.
    """

    _parameter_constraints = _MLP_CONSTRAINTS

    # scikit-learn reads each class's own signature: this one has no weights to set.
    def __init__(
        self,
        protocol: str = "default",
        scale_aware: bool | None = None,
        raw_regularisers: bool | None = None,
        scale_init: float | None = None,
        head_init: str | None = None,
        min_steps: int | None = None,
        feature_augment: str | None = None,
        augment_strength: float = 0.1,
        hidden_ratio: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        epochs: int = 30,
        standardize: bool | None = None,
        validation: float | None = None,
        n_iter_no_change: int | None = None,
        device: str = "auto",
        random_state=None,
        verbose: bool = False,
    ):
        self.protocol = protocol
        self.scale_aware = scale_aware
        self.raw_regularisers = raw_regularisers
        self.scale_init = scale_init
        self.head_init = head_init
        self.min_steps = min_steps
        self.feature_augment = feature_augment
        self.augment_strength = augment_strength
        self.hidden_ratio = hidden_ratio
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.standardize = standardize
        self.validation = validation
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _regularisation(self) -> tuple[tuple[float, ...], int]:
        return (0.0,) * len(REGULARISERS), 5
