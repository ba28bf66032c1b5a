"""Estimate a model's pre-training label-noise ratio from the spectrum of its features.

Pre-training noise reshapes the feature spectrum (DESIGN §3.2: SVE rises, LSVR falls), so on a
fixed probe set the spectrum metrics of a model's features predict the noise it was trained
with. The predictor is calibrated on a grid of models with known noise, as a study writes it
in ``spectrum.csv`` (one row per model and probe set): a ridge regression
(:class:`~sklearn.linear_model.RidgeCV` on standardised SVE, LSVR and effective rank).

Validation leaves out whole seeds (:class:`~sklearn.model_selection.LeaveOneGroupOut`): every
model of a seed is predicted by a fit on the other seeds' models, and the mean absolute error
is compared with the trivial predictor (the mean noise ratio of the other seeds). The interval
of an estimate is split-conformal on those held-out residuals: the estimate plus or minus
their ``level`` quantile.

Scope: it holds only for models of the calibration's architecture, pre-training data family
and probe set (same ``features_of``, similar size), since all three move the spectrum too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ._io import read_csv_table
from ._validation import NMTuneError

__all__ = ["NoiseEstimate", "estimate_noise", "load_calibration", "validate_calibration"]

#: Spectrum metrics the regression reads, as ``spectrum.csv`` names them.
METRICS = ("sve", "lsvr", "effective_rank")
_COLUMNS = (*METRICS, "noise_ratio", "seed")


@dataclass(frozen=True)
class NoiseEstimate:
    """An estimated pre-training noise ratio and what it rests on.

    Attributes
    ----------
    ratio : float
        Estimated noise ratio in [0, 1].
    low, high : float
        The ``level`` prediction interval (clipped to [0, 1]).
    level : float
    mae, trivial_mae : float
        Leave-one-seed-out mean absolute error of the estimator and of the trivial (mean)
        predictor on the calibration grid, in noise-ratio points (percent).
    n_models, n_seeds : int
        Calibration models and seeds.
    features_of : str
        The probe set the calibration (and so the features) must come from.
    metrics : dict
        SVE, LSVR and effective rank of the given features.
    """

    ratio: float
    low: float
    high: float
    level: float
    mae: float
    trivial_mae: float
    n_models: int
    n_seeds: int
    features_of: str
    metrics: dict

    def to_dict(self) -> dict:
        return asdict(self)


def load_calibration(path, probe: str | None = None) -> pd.DataFrame:
    """Calibration rows for one probe set, from a study folder or a CSV file.

    Parameters
    ----------
    path : path
        A study folder (its ``spectrum.csv`` is read) or a CSV with columns ``sve``, ``lsvr``,
        ``effective_rank``, ``noise_ratio``, ``seed`` and optionally ``features_of``.
    probe : str, optional
        The ``features_of`` to keep; required when the table holds several.

    Returns
    -------
    DataFrame with the columns above, one row per model.
    """
    path = Path(path)
    csv = path / "spectrum.csv" if path.is_dir() else path
    if not csv.is_file():
        raise NMTuneError(f"calibration not found: {csv} (give a study folder or a CSV file)")
    table = read_csv_table(csv, _COLUMNS)
    if "features_of" in table.columns:
        probes = sorted(table["features_of"].astype(str).unique())
        if probe is None and len(probes) > 1:
            raise NMTuneError(f"{csv} calibrates several probe sets {probes}; choose one")
        probe = probes[0] if probe is None else probe
        if probe not in probes:
            raise NMTuneError(f"{csv} has no probe set {probe!r}; it has {probes}")
        table = table[table["features_of"].astype(str) == probe]
    elif probe is not None:
        raise NMTuneError(f"{csv} has no probe set {probe!r}: it has no features_of column")
    table = table.assign(features_of=probe or "")
    numbers = table[list(METRICS) + ["noise_ratio"]].apply(pd.to_numeric, errors="coerce")
    if not np.all(np.isfinite(numbers.to_numpy())):
        raise NMTuneError(f"{csv}: {', '.join(METRICS)} and noise_ratio must be finite numbers")
    if not numbers["noise_ratio"].between(0, 1).all():
        raise NMTuneError(f"{csv}: noise_ratio must be fractions in [0, 1] (not percent)")
    table = table.assign(**numbers)
    if table["noise_ratio"].nunique() < 2 or table["seed"].nunique() < 2:
        raise NMTuneError(f"{csv}: calibration needs at least 2 noise ratios and 2 seeds")
    return table.reset_index(drop=True)


def _model():
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))


def validate_calibration(table: pd.DataFrame) -> dict:
    """Leave-one-seed-out errors of the estimator and of the trivial (mean) predictor.

    Parameters
    ----------
    table : DataFrame from :func:`load_calibration`

    Returns
    -------
    dict
        ``mae`` and ``trivial_mae`` (noise-ratio points), ``residuals`` (held-out
        ``true - predicted`` per model, as fractions) and ``predicted``.
    """
    X, y, seeds = table[list(METRICS)].to_numpy(), table["noise_ratio"].to_numpy(), table["seed"]
    predicted = cross_val_predict(_model(), X, y, groups=seeds, cv=LeaveOneGroupOut())
    # The trivial predictor fitted the same way: the mean ratio of the other seeds' models.
    totals = pd.DataFrame({"seed": seeds, "y": y}).groupby("seed")["y"].agg(["sum", "count"])
    rest = (totals["sum"].sum() - totals.loc[seeds, "sum"].to_numpy()) / (
        totals["count"].sum() - totals.loc[seeds, "count"].to_numpy())
    return {"mae": 100 * float(np.mean(np.abs(y - predicted))),
            "trivial_mae": 100 * float(np.mean(np.abs(y - rest))),
            "residuals": y - predicted, "predicted": predicted}


def estimate_noise(features, calibration, *, probe: str | None = None, level: float = 0.9
                   ) -> NoiseEstimate:
    """Estimate the pre-training noise ratio of the model that produced ``features``.

    Parameters
    ----------
    features : array-like of shape (N, D)
        The model's features of the calibration's probe set (``features_of``).
    calibration : path or DataFrame
        A study folder, a calibration CSV (see :func:`load_calibration`) or its table.
    probe : str, optional
        Which ``features_of`` of the calibration to use.
    level : float in (0, 1)
        Coverage of the interval.

    Returns
    -------
    NoiseEstimate
    """
    from .spectrum import summary

    if not 0 < level < 1:
        raise NMTuneError(f"level must be in (0, 1), got {level}")
    table = calibration if isinstance(calibration, pd.DataFrame) else load_calibration(
        calibration, probe)
    width = np.shape(features)[-1]
    # SVE and effective rank grow with the width: only models of the calibration's width compare.
    if "d" in table.columns and not (table["d"] == width).all():
        raise NMTuneError(f"the features are {width}-d but the calibration's models are "
                          f"{'/'.join(map(str, sorted(table['d'].unique())))}-d: calibrate on "
                          "models of this width")
    check = validate_calibration(table)
    s = summary(features)  # normalised and centred, as the study measures its spectra
    metrics = {m: float(s[m]) for m in METRICS}
    model = _model().fit(table[list(METRICS)].to_numpy(), table["noise_ratio"].to_numpy())
    ratio = float(np.clip(model.predict([[metrics[m] for m in METRICS]])[0], 0.0, 1.0))
    half = _conformal_half_width(np.abs(check["residuals"]), level)
    return NoiseEstimate(ratio, max(0.0, ratio - half), min(1.0, ratio + half), level,
                         check["mae"], check["trivial_mae"], len(table),
                         int(table["seed"].nunique()), str(table["features_of"].iloc[0]),
                         metrics)


def _conformal_half_width(abs_residuals: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1)·level)``-th smallest held-out residual (split conformal)."""
    n = abs_residuals.size
    rank = math.ceil((n + 1) * level)
    if rank > n:  # too few models for this level: the interval is the whole range
        return math.inf
    return float(np.sort(abs_residuals)[rank - 1])
