"""Paired effects with confidence intervals, equivalence, power and a verdict per claim.

A claim compares accuracy under two conditions on the same cells (same seed, task, method...),
so its data are paired differences in accuracy points. The unit of replication is the seed:
differences are averaged to one value per (task, seed), and

- the **effect** is the mean over tasks of each task's mean over seeds;
- its **95% interval** is a t-interval on the per-seed effects (averaged over tasks), or a
  bootstrap over seeds stratified by task (:func:`scipy.stats.bootstrap`, each task's seeds
  resampled on their own, as the reliable-evaluation literature recommends);
- **equivalence** is two one-sided t-tests (TOST, statsmodels) against ``±margin`` points;
- **power** is that of the two-sided one-sample t-test on per-seed effects (the noncentral t,
  as statsmodels' ``TTestPower`` computes it, see :func:`t_test_power`): the seeds that would
  detect an effect of ``margin`` points with 80% power, and the minimum detectable effect (MDE)
  of the study as run.

The verdict, in this order: "reproduced" when the interval excludes 0 in the claimed
direction, "contradicted" when it excludes 0 the other way, "no effect" when TOST shows the
effect lies within ``±margin`` (read: no effect as large as ``margin`` points), otherwise
"underpowered", with the seeds that would resolve an effect of ``margin`` points.

The t-interval is the default: with a handful of seeds a percentile bootstrap has too few
distinct resamples and covers less than its nominal 95%, while the t-interval is exact for
normally distributed seed effects. Pass ``interval="bootstrap"`` to decide on the bootstrap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats.weightstats import DescrStatsW

from ._validation import NMTuneError

__all__ = ["CLAIMS", "VERDICTS", "Effect", "claim_differences", "claim_effects", "paired_effect",
           "seed_effects"]

#: The verdicts :func:`paired_effect` gives.
VERDICTS = ("reproduced", "contradicted", "no effect", "underpowered")
#: Seeds recommended at most (a larger answer means: not resolvable by adding seeds).
MAX_SEEDS = 10_000


@dataclass(frozen=True)
class Effect:
    """A claim's paired effect in accuracy points, its intervals, power and verdict.

    Attributes
    ----------
    mean : float
        Mean over tasks of each task's mean paired difference over seeds (points).
    low, high : float
        The 95% interval the verdict uses (``interval``); NaN when it cannot be computed.
    interval : {"t", "bootstrap"}
    t_low, t_high : float
        t-interval on the per-seed effects (NaN with fewer than 2 seeds).
    boot_low, boot_high : float
        Percentile bootstrap over seeds stratified by task (NaN when a task has < 2 seeds).
    sd : float
        Standard deviation of the per-seed effects (points, ddof=1).
    n_seeds, n_tasks, n_pairs : int
        Seeds, tasks and paired differences behind the effect.
    sign : {+1, -1}
        The claimed direction.
    margin : float
        Smallest effect of interest (points): the TOST margin and the power target.
    tost_p : float
        p-value of the TOST that the effect lies within ``±margin``.
    mde : float
        Minimum detectable effect (points) of the study as run: the effect a two-sided
        t-test at ``alpha`` detects with ``power`` given ``n_seeds`` and ``sd``.
    seeds_needed : int or None
        Seeds that would detect an effect of ``margin`` points with ``power`` (None when
        there is no spread to plan from).
    verdict : str
        One of :data:`VERDICTS`.
    alpha, power : float
    """

    mean: float
    low: float
    high: float
    interval: str
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    sd: float
    n_seeds: int
    n_tasks: int
    n_pairs: int
    sign: int
    margin: float
    tost_p: float
    mde: float
    seeds_needed: int | None
    verdict: str
    alpha: float
    power: float

    def describe(self) -> str:
        """One line: effect, interval, verdict in words, MDE."""
        level = f"{1 - self.alpha:.0%}"
        interval = (f"[{self.low:+.2f}, {self.high:+.2f}]" if math.isfinite(self.low)
                    else "no interval")
        words = {
            "reproduced": "reproduced",
            "contradicted": "contradicted",
            "no effect": f"no effect as large as {self.margin:g} pts (TOST p={self.tost_p:.3g})",
            "underpowered": f"underpowered: {self._seeds_text()}",
        }[self.verdict]
        mde = f"{self.mde:.2f} pts" if math.isfinite(self.mde) else "n/a"
        return (f"{self.mean:+.2f} pts, {level} {self.interval}-interval {interval} "
                f"(n={self.n_seeds} seeds × {self.n_tasks} tasks); {words}; "
                f"minimum detectable effect {mde}")

    def _seeds_text(self) -> str:
        if self.seeds_needed is None:
            return "no seed-to-seed spread to plan from (needs at least 2 seeds)"
        return (f"{self.seeds_needed} seeds would detect {self.margin:g} pts with "
                f"{self.power:.0%} power")

    def to_dict(self) -> dict:
        return asdict(self)


def seed_effects(diffs: pd.DataFrame, value: str = "diff") -> pd.DataFrame:
    """Average paired differences to one value per (task, seed).

    Parameters
    ----------
    diffs : DataFrame
        One row per paired difference, with ``seed``, ``value`` and optionally ``task``
        (all rows are one task without it). Other columns (method, test set...) are averaged
        over.

    Returns
    -------
    DataFrame with columns ``task``, ``seed``, ``value``
    """
    missing = [c for c in ("seed", value) if c not in diffs.columns]
    if missing:
        raise NMTuneError(f"paired differences lack the column(s) {missing}")
    df = diffs.assign(task=diffs["task"] if "task" in diffs.columns else "all")
    values = pd.to_numeric(df[value], errors="coerce")
    if values.isna().any() or not np.all(np.isfinite(values)):
        raise NMTuneError(f"paired differences in {value!r} must be finite numbers")
    return df.assign(**{value: values}).groupby(["task", "seed"], as_index=False)[value].mean()


def paired_effect(
    diffs,
    *,
    sign: int = 1,
    margin: float = 1.0,
    alpha: float = 0.05,
    power: float = 0.8,
    interval: str = "t",
    value: str = "diff",
    n_resamples: int = 9999,
    random_state: int = 0,
) -> Effect:
    """The paired effect of a claim with its interval, TOST, power and verdict.

    Parameters
    ----------
    diffs : DataFrame or array-like of shape (n_seeds,)
        Paired differences in accuracy points: a table with ``seed``, ``value`` and optionally
        ``task`` columns (see :func:`seed_effects`), or one difference per seed.
    sign : {+1, -1}
        The claimed direction: +1 claims the difference is positive.
    margin : float > 0
        Smallest effect of interest in points: the TOST equivalence margin and the effect the
        power analysis plans for.
    alpha : float in (0, 1)
        Two-sided level: a ``1 - alpha`` interval, TOST at ``alpha``.
    power : float in (0, 1)
        Target power for ``seeds_needed`` and ``mde``.
    interval : {"t", "bootstrap"}
        Which interval decides the verdict; both are reported.
    value : str
        Column of ``diffs`` holding the differences.
    n_resamples, random_state : int
        Bootstrap resamples and seed.

    Returns
    -------
    Effect
    """
    if sign not in (1, -1):
        raise NMTuneError(f"sign must be +1 or -1, got {sign!r}")
    if not (isinstance(margin, int | float) and margin > 0):
        raise NMTuneError(f"margin must be a positive number of points, got {margin!r}")
    for name, p in (("alpha", alpha), ("power", power)):
        if not 0 < p < 1:
            raise NMTuneError(f"{name} must be in (0, 1), got {p!r}")
    if interval not in ("t", "bootstrap"):
        raise NMTuneError(f"interval must be 't' or 'bootstrap', got {interval!r}")
    if not isinstance(diffs, pd.DataFrame):
        x = np.asarray(diffs, dtype=float).ravel()
        diffs = pd.DataFrame({"seed": np.arange(x.size), value: x})
    n_pairs = len(diffs)
    per_task_seed = seed_effects(diffs, value)
    if per_task_seed.empty:
        raise NMTuneError("no paired differences to estimate an effect from")
    per_seed = per_task_seed.groupby("seed")[value].mean().to_numpy()
    tasks = [g[value].to_numpy() for _, g in per_task_seed.groupby("task")]
    mean = float(np.mean([t.mean() for t in tasks]))
    n = per_seed.size
    sd = float(np.std(per_seed, ddof=1)) if n > 1 else math.nan
    t_low, t_high = _t_interval(per_seed, alpha)
    boot_low, boot_high = _stratified_bootstrap(tasks, alpha, n_resamples, random_state)
    low, high = (t_low, t_high) if interval == "t" else (boot_low, boot_high)
    tost_p = _tost_p(per_seed, margin)
    mde, needed = _power(n, sd, margin, alpha, power)
    if low > 0 or high < 0:  # NaN compares False: no interval, no direction
        verdict = "reproduced" if (low > 0) == (sign > 0) else "contradicted"
    elif tost_p < alpha:
        verdict = "no effect"
    else:
        verdict = "underpowered"
    return Effect(mean, low, high, interval, t_low, t_high, boot_low, boot_high, sd, n,
                  len(tasks), n_pairs, sign, float(margin), tost_p, mde, needed, verdict,
                  alpha, power)


def _t_interval(x: np.ndarray, alpha: float) -> tuple[float, float]:
    if x.size < 2:
        return math.nan, math.nan
    if np.ptp(x) == 0:  # no spread: the interval is the point (statsmodels would give NaN)
        return float(x[0]), float(x[0])
    low, high = DescrStatsW(x).tconfint_mean(alpha=alpha)
    return float(low), float(high)


def _stratified_bootstrap(
    tasks: list[np.ndarray], alpha: float, n_resamples: int, random_state: int
) -> tuple[float, float]:
    """Percentile interval of the mean of task means, each task's seeds resampled on their own."""
    if any(t.size < 2 for t in tasks):
        return math.nan, math.nan

    def mean_of_task_means(*samples, axis):
        return np.mean([s.mean(axis=axis) for s in samples], axis=0)

    res = sps.bootstrap(tasks, mean_of_task_means, n_resamples=n_resamples,
                        confidence_level=1 - alpha, method="percentile", vectorized=True,
                        rng=np.random.default_rng(random_state))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _tost_p(x: np.ndarray, margin: float) -> float:
    """p-value of TOST that the mean of ``x`` lies in ``(-margin, margin)``."""
    if x.size < 2:
        return math.nan
    if np.ptp(x) == 0:  # no spread: equivalent exactly when the point is inside the margin
        return 0.0 if abs(x[0]) < margin else 1.0
    p, _, _ = DescrStatsW(x).ttost_mean(-margin, margin)
    return float(p)


def _power(n: int, sd: float, margin: float, alpha: float, power: float
           ) -> tuple[float, int | None]:
    """(minimum detectable effect with ``n`` seeds, seeds needed to detect ``margin``)."""
    if n < 2 or not sd > 0:
        return (0.0 if n >= 2 else math.nan), (None if n < 2 else 2)
    # Power rises with the effect size and with n: bracketing root finders always converge.
    d = optimize.brentq(lambda d: t_test_power(d, n, alpha) - power, 1e-9, 1e3, xtol=1e-12)
    return d * sd, _seeds_for(margin / sd, alpha, power)


def _seeds_for(effect_size: float, alpha: float, power: float) -> int:
    """Smallest whole number of seeds (at least 2) with at least ``power``."""
    if t_test_power(effect_size, 2, alpha) >= power:
        return 2
    if t_test_power(effect_size, MAX_SEEDS, alpha) < power:
        return MAX_SEEDS
    n = optimize.brentq(lambda n: t_test_power(effect_size, n, alpha) - power, 2, MAX_SEEDS,
                        xtol=1e-9)
    return math.ceil(n - 1e-6)  # an exact integer root must not round up by rounding error


def t_test_power(effect_size: float, n: float, alpha: float) -> float:
    """Power of the two-sided one-sample t-test at level ``alpha`` with ``n`` observations.

    The same quantity as statsmodels' ``TTestPower().power``, which returns NaN when scipy's
    noncentral t underflows in the opposite tail (large ``effect_size·sqrt(n)``); that tail is
    then below double precision and counts as 0 here.
    """
    df, nc = n - 1, effect_size * math.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    upper = float(sps.nct.sf(crit, df, nc))
    lower = float(sps.nct.cdf(-crit, df, nc))
    return upper + (0.0 if math.isnan(lower) else lower)


# --------------------------------------------------------------------------------------------
# The paper's accuracy claims as paired differences
# --------------------------------------------------------------------------------------------

#: The paper's "slight" pre-training noise: ratios in this closed interval.
SLIGHT_NOISE = (0.05, 0.10)
#: Columns that identify one downstream evaluation apart from the noise setting.
PAIR_KEYS = ("seed", "task", "train_set", "test_set", "method", "protocol")
#: Claim name -> (claimed sign, what it compares).
CLAIMS = {
    "slight noise helps ID": (1, "ID accuracy at 5-10% noise minus 0%"),
    "noise hurts OOD": (-1, "OOD accuracy at the highest noise ratio minus 0%"),
    "NMTune beats LP (ID)": (1, "ID accuracy of nmtune minus lp"),
    "NMTune beats MLP (ID)": (1, "ID accuracy of nmtune minus mlp"),
    "NMTune beats LP (OOD)": (1, "OOD accuracy of nmtune minus lp"),
    "NMTune beats MLP (OOD)": (1, "OOD accuracy of nmtune minus mlp"),
}


def claim_differences(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Paired differences (points, column ``diff``) behind each claim of :data:`CLAIMS`.

    The one copy of the pairing (the report's claims use it): noise claims compare rows
    sharing seed, task, train/test sets, method and protocol, with the treated ratios of one
    noise type averaged per pair first; method claims compare methods on the same noise
    setting and cell. A claim the results cannot test (no 0% rows, no OOD rows, a missing
    method) is left out.

    Parameters
    ----------
    results : DataFrame
        ``results.csv`` rows: ``seed``, ``kind``, ``method``, ``noise_ratio``, ``accuracy``
        (fractions) and the other pair keys where present.
    """
    out = {}
    by_kind = {kind: results[results["kind"] == kind] for kind in ("id", "ood")}
    ratio = by_kind["id"]["noise_ratio"]
    slight = (ratio >= SLIGHT_NOISE[0] - 1e-9) & (ratio <= SLIGHT_NOISE[1] + 1e-9)
    out["slight noise helps ID"] = _noise_differences(by_kind["id"], slight)
    ood = by_kind["ood"]
    highest = ood.groupby("noise_type")["noise_ratio"].transform("max")
    out["noise hurts OOD"] = _noise_differences(ood, np.isclose(ood["noise_ratio"], highest)
                                                & (highest > 0))
    for kind, rows in by_kind.items():
        for baseline in ("lp", "mlp"):
            name = f"NMTune beats {baseline.upper()} ({kind.upper()})"
            out[name] = _method_differences(rows, "nmtune", baseline)
    return {name: d for name, d in out.items() if not d.empty}


def claim_effects(results: pd.DataFrame, **kwargs) -> dict[str, Effect]:
    """:func:`paired_effect` of every claim the results can test; ``kwargs`` go to it."""
    return {name: paired_effect(d, sign=CLAIMS[name][0], **kwargs)
            for name, d in claim_differences(results).items()}


def _keys(df: pd.DataFrame, *extra: str) -> list[str]:
    return [c for c in (*extra, *PAIR_KEYS) if c in df.columns]


def _noise_differences(rows: pd.DataFrame, treated: pd.Series) -> pd.DataFrame:
    """Treated rows (averaged per pair and noise type) minus the 0% rows of the same pair."""
    keys = _keys(rows)
    clean = rows[np.isclose(rows["noise_ratio"], 0.0)].groupby(keys)["accuracy"].mean()
    noisy = rows[treated].groupby([*keys, "noise_type"])["accuracy"].mean().reset_index()
    paired = noisy.join(clean.rename("clean"), on=keys, how="inner")
    return paired.assign(diff=100 * (paired["accuracy"] - paired["clean"]))


def _method_differences(rows: pd.DataFrame, method: str, baseline: str) -> pd.DataFrame:
    keys = [k for k in _keys(rows, "noise_type", "noise_ratio") if k != "method"]
    wide = rows.assign(method=rows["method"].str.lower()).pivot_table(
        index=keys, columns="method", values="accuracy", aggfunc="mean")
    if method not in wide.columns or baseline not in wide.columns:
        return pd.DataFrame()
    diff = 100 * (wide[method] - wide[baseline])
    return diff.dropna().rename("diff").reset_index()
