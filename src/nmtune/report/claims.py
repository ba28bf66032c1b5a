"""The paper's claims checked against measured results: one function per claim, one verdict each.

:func:`check_claims` returns a list of :class:`Claim` (claim, verdict, evidence, statistics),
each decided by the fixed rules in :data:`DECISION_RULES`. Each claim has its own
``_claim_*`` function that takes conformed tables and returns one :class:`Claim`; the paired
statistics they share live in :class:`_Paired`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .._validation import NMTuneError
from ..results import conform_results, conform_spectrum

#: The four verdicts a claim can get.
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable")
#: A paired mean difference counts as real when it is larger than this many standard errors
#: (about a two-sided 95% interval for a normal mean).
SE_MULTIPLE = 2.0
#: A Spearman correlation counts as real below this p-value.
ALPHA = 0.05
#: The paper's "slight" pre-training noise: ratios in this closed interval.
SLIGHT_NOISE = (0.05, 0.10)
#: Method names the NMTune claim compares (lower case, as ``results.csv`` writes them).
NMTUNE, BASELINES = "nmtune", ("lp", "mlp")

DECISION_RULES = (
    "Accuracy differences are paired: two rows are compared only when they share seed, task, "
    "train/test sets, method and protocol (and noise setting, for method comparisons). For each "
    f"comparison the report gives the mean paired difference in accuracy points, its standard "
    f"error (SE, std/sqrt(n)), the counts of pairs that went up and down and a two-sided sign "
    f"test. A difference is called real only when |mean| > {SE_MULTIPLE:g} SE; otherwise it is "
    "within the seed-to-seed spread and the verdict is 'inconclusive'. "
    "(1) Slight noise helps ID: ID accuracy averaged over the ratios in "
    f"{SLIGHT_NOISE[0]:.0%}-{SLIGHT_NOISE[1]:.0%} minus accuracy at 0%, pooled over methods; "
    "reproduced if the mean is real and positive, not reproduced if real and negative. "
    "(2) Noise hurts OOD: OOD accuracy at each noise type's highest ratio minus 0%; reproduced "
    "if the mean is real and negative and the Spearman correlation of accuracy with noise ratio "
    "(accuracy centred within each task x method x protocol series) is negative; not reproduced "
    "if the mean is real and positive. "
    "(3) SVE rises and LSVR falls with noise: Spearman correlation of each metric with noise "
    "ratio over all pre-trained models (centred within each features_of); reproduced if in the "
    f"claimed direction with p < {ALPHA:g}, not reproduced if opposite with p < {ALPHA:g}. "
    "(4) NMTune beats LP and MLP: NMTune minus each baseline, paired over all cells; reproduced "
    "if every difference is real and positive, not reproduced if any is real and negative. "
    "A claim is 'not testable' when the data lacks what it needs (no noise grid, no 0% "
    "baseline, no OOD rows, a missing method)."
)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and what the measured numbers say about it.

    Attributes
    ----------
    claim : str
        The claim, in words.
    verdict : {"reproduced", "not reproduced", "inconclusive", "not testable"}
    evidence : str
        The numbers behind the verdict.
    statistics : dict of str to float
        The same numbers, machine-readable (differences in accuracy points).
    """

    claim: str
    verdict: str
    evidence: str
    statistics: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise NMTuneError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass(frozen=True)
class _Paired:
    """Summary of paired differences (in accuracy points)."""

    mean: float
    se: float
    n: int
    up: int
    down: int
    sign_p: float

    @classmethod
    def of(cls, diffs) -> _Paired:
        diffs = np.asarray(diffs, dtype=float)
        n = diffs.size
        up, down = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
        se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        sign_p = float(stats.binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
        return cls(float(np.mean(diffs)) if n else math.nan, se, n, up, down, sign_p)

    @property
    def direction(self) -> int:
        """+1 / -1 when the mean is more than ``SE_MULTIPLE`` SE above / below 0, else 0."""
        if self.n < 2 or self.mean == 0 or abs(self.mean) <= SE_MULTIPLE * self.se:
            return 0
        return 1 if self.mean > 0 else -1

    def short(self) -> str:
        se = f"{self.se:.2f}" if math.isfinite(self.se) else "n/a"
        return f"{self.mean:+.2f} ± {se} pts"

    def describe(self) -> str:
        return (
            f"{self.short()} (mean ± SE, n={self.n}; {self.up} up, {self.down} down, "
            f"sign test {_p_value(self.sign_p)})"
        )

    def statistics(self, prefix: str = "") -> dict:
        names = ("mean_diff_pts", "se_pts", "n", "up", "down", "sign_p")
        values = (self.mean, self.se, self.n, self.up, self.down, self.sign_p)
        return {f"{prefix}{k}": v for k, v in zip(names, values, strict=True)}


def _pair_keys(df: pd.DataFrame) -> list[str]:
    """Columns that identify one downstream evaluation apart from the noise setting."""
    return [c for c in ("seed", "task", "train_set", "test_set", "method", "protocol") if c in df]


def _noise_differences(rows: pd.DataFrame, treated: pd.Series) -> pd.DataFrame:
    """Accuracy (pts) of the ``treated`` rows minus the clean (0%) rows with the same pair keys.

    Treated rows of one noise type are averaged per pair first, so several ratios sharing one
    baseline give one (not several dependent) pairs. The clean baseline is matched regardless
    of its noise type, since a 0% model is the same model under any noise type.
    """
    keys = _pair_keys(rows)
    clean = rows[np.isclose(rows["noise_ratio"], 0.0)].groupby(keys)["accuracy"].mean()
    noisy = rows[treated].groupby([*keys, "noise_type"])["accuracy"].mean().reset_index()
    paired = noisy.join(clean.rename("clean"), on=keys, how="inner")
    return paired.assign(diff=100 * (paired["accuracy"] - paired["clean"]))


def _within_spearman(df: pd.DataFrame, value: str, groups: list[str]) -> tuple[float, float, int]:
    """Spearman correlation of ``value`` with noise ratio after centring ``value`` per group.

    Centring removes level differences between groups (tasks, methods, feature sets) so that
    only the movement with noise is correlated. Returns (rho, p, n); NaN when undefined.
    """
    df = df.dropna(subset=[value])
    if len(df) < 3 or df["noise_ratio"].nunique() < 2:
        return math.nan, math.nan, len(df)
    centred = df[value] - df.groupby(groups)[value].transform("mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        rho, p = stats.spearmanr(df["noise_ratio"], centred)
    return float(rho), float(p), len(df)


def _p_value(p: float) -> str:
    # scipy reports an exact 0 for a perfect rank correlation; "p=0" would overstate it.
    return "p<1e-300" if p == 0 else f"p={p:.3g}"


def _describe_rho(rho: float, p: float, n: int) -> str:
    return f"Spearman ρ={rho:+.3f} ({_p_value(p)}, n={n})"


def _verdict(direction: int) -> str:
    return {1: "reproduced", -1: "not reproduced", 0: "inconclusive"}[direction]


def _untestable(claim: str, why: str) -> Claim:
    return Claim(claim, "not testable", why)


def _claim_slight_noise_helps_id(results: pd.DataFrame) -> Claim:
    claim = (
        f"Slight pre-training noise ({SLIGHT_NOISE[0]:.0%}-{SLIGHT_NOISE[1]:.0%}) "
        "improves in-domain (ID) transfer"
    )
    rows = results[results["kind"] == "id"]
    ratio = rows["noise_ratio"]
    slight = (ratio >= SLIGHT_NOISE[0] - 1e-9) & (ratio <= SLIGHT_NOISE[1] + 1e-9)
    diffs = _noise_differences(rows, slight)
    if diffs.empty:
        return _untestable(claim, "needs ID accuracy at 0% and at 5-10% noise for the same cells")
    pooled = _Paired.of(diffs["diff"])
    per_method = {m: _Paired.of(g["diff"]) for m, g in diffs.groupby("method")}
    evidence = (
        f"ID accuracy at 5-10% minus 0%, pooled over methods: {pooled.describe()}. Per method: "
        + "; ".join(f"{m} {p.short()} (n={p.n})" for m, p in per_method.items())
        + "."
    )
    statistics = pooled.statistics()
    for method, paired in per_method.items():
        statistics.update(paired.statistics(f"{method}."))
    return Claim(claim, _verdict(pooled.direction), evidence, statistics)


def _claim_noise_hurts_ood(results: pd.DataFrame) -> Claim:
    claim = "Pre-training noise hurts out-of-domain (OOD) transfer"
    rows = results[results["kind"] == "ood"]
    if rows.empty:
        return _untestable(claim, "no OOD rows in results.csv")
    highest = rows.groupby("noise_type")["noise_ratio"].transform("max")
    treated = np.isclose(rows["noise_ratio"], highest) & (highest > 0)
    diffs = _noise_differences(rows, treated)
    if diffs.empty:
        return _untestable(claim, "needs OOD accuracy at 0% and a noisy ratio for the same cells")
    paired = _Paired.of(diffs["diff"])
    series = [c for c in _pair_keys(rows) if c != "seed"]
    rho, p, n = _within_spearman(rows, "accuracy", series)
    highest_by_type = rows[treated].groupby("noise_type")["noise_ratio"].max()
    top = ", ".join(f"{t} {r:.0%}" for t, r in highest_by_type.items())
    evidence = (
        f"OOD accuracy at the highest ratio ({top}) minus 0%: {paired.describe()}; accuracy vs "
        f"noise ratio within each series: {_describe_rho(rho, p, n)}."
    )
    if paired.direction == -1 and rho < 0:
        verdict = "reproduced"
    else:
        verdict = "not reproduced" if paired.direction == 1 else "inconclusive"
    statistics = {**paired.statistics(), "spearman_rho": rho, "spearman_p": p, "spearman_n": n}
    return Claim(claim, verdict, evidence, statistics)


def _claim_spectrum_moves(spectrum: pd.DataFrame | None, metric: str, sign: int) -> Claim:
    moves = "increases" if sign > 0 else "decreases"
    names = {"sve": "singular value entropy (SVE)", "lsvr": "largest singular value ratio (LSVR)"}
    claim = f"Pre-training noise {moves} the features' {names[metric]}"
    if spectrum is None or spectrum[metric].isna().all():
        return _untestable(claim, f"no {metric.upper()} values (spectrum.csv)")
    if spectrum["noise_ratio"].nunique() < 2:
        return _untestable(claim, "no noise grid: every model has the same noise ratio")
    rho, p, n = _within_spearman(spectrum, metric, ["features_of"])
    evidence = f"{metric.upper()} vs noise ratio over all models: {_describe_rho(rho, p, n)}."
    direction = int(np.sign(rho)) * sign if p < ALPHA else 0  # NaN p compares False
    statistics = {"spearman_rho": rho, "spearman_p": p, "spearman_n": n}
    return Claim(claim, _verdict(direction), evidence, statistics)


def _claim_nmtune_wins(results: pd.DataFrame, kind: str) -> Claim:
    domain = {"id": "in-domain (ID)", "ood": "out-of-domain (OOD)"}[kind]
    claim = f"NMTune beats LP and MLP {domain}"
    rows = results[results["kind"] == kind]
    keys = ["noise_type", "noise_ratio", *[c for c in _pair_keys(rows) if c != "method"]]
    by_method = rows.assign(method=rows["method"].str.lower()).pivot_table(
        index=keys, columns="method", values="accuracy", aggfunc="mean"
    )
    present = [b for b in BASELINES if b in by_method.columns]
    if NMTUNE not in by_method.columns or not present:
        return _untestable(claim, f"needs {kind.upper()} rows for nmtune and lp or mlp")
    diffs = {b: 100 * (by_method[NMTUNE] - by_method[b]).dropna() for b in present}
    comparisons = {b: _Paired.of(d) for b, d in diffs.items() if len(d)}
    if not comparisons:
        return _untestable(claim, f"nmtune and lp/mlp never share a {kind.upper()} cell")
    evidence = "; ".join(f"NMTune - {b.upper()}: {p.describe()}" for b, p in comparisons.items())
    absent = [b.upper() for b in BASELINES if b not in comparisons]
    if absent:
        evidence += f"; no {', '.join(absent)} rows to compare against"
    directions = [p.direction for p in comparisons.values()]
    if any(d == -1 for d in directions):
        verdict = "not reproduced"
    else:
        verdict = "reproduced" if all(d == 1 for d in directions) else "inconclusive"
    statistics = {}
    for baseline, paired in comparisons.items():
        statistics.update(paired.statistics(f"vs_{baseline}."))
    return Claim(claim, verdict, evidence + ".", statistics)


def check_claims(results_df: pd.DataFrame, spectrum_df: pd.DataFrame | None = None) -> list[Claim]:
    """Check the paper's claims against measured results.

    Accuracy comparisons are paired: rows are compared only when they share seed, task,
    train/test sets, method and protocol (and, between methods, the noise setting). Each
    comparison reports the mean paired difference in accuracy points, its standard error
    ``SE = std(ddof=1) / sqrt(n)``, the pairs that went up and down, and a two-sided sign test.
    A difference is *real* when ``|mean| > SE_MULTIPLE * SE`` (2 SE, with n >= 2 pairs).

    1. Slight noise helps ID: ID accuracy averaged over ratios in ``SLIGHT_NOISE`` (5-10%)
       minus 0%, pooled over methods: "reproduced" if real and positive, "not reproduced" if
       real and negative, else "inconclusive".
    2. Noise hurts OOD: OOD accuracy at each noise type's highest ratio minus 0%, and the
       Spearman correlation of accuracy with noise ratio (accuracy centred within each
       task x method x protocol series): "reproduced" if the difference is real and negative
       and the correlation negative; "not reproduced" if the difference is real and positive.
    3. SVE increases / LSVR decreases with noise (two claims): Spearman correlation of the
       metric with noise ratio over all models (centred within each ``features_of``):
       "reproduced" if in the claimed direction with ``p < ALPHA`` (0.05), "not reproduced" if
       opposite with ``p < ALPHA``.
    4. NMTune beats LP and MLP, ID and OOD (two claims): NMTune minus each baseline, paired
       over all cells (noise setting, seed, task, protocol): "reproduced" if every difference
       is real and positive, "not reproduced" if any is real and negative.

    A claim is "not testable" when the data lacks what it needs (no noise grid, no 0%
    baseline, no OOD rows, no spectrum, a missing method).

    Parameters
    ----------
    results_df : DataFrame
        ``results.csv`` rows (at least ``method`` and ``accuracy``; see :func:`load_results`).
    spectrum_df : DataFrame or None
        ``spectrum.csv`` rows (``noise_ratio``, ``sve``, ``lsvr``, ``features_of``).

    Returns
    -------
    list of Claim
        Six claims, in the order above (3 and 4 split in two).
    """
    notes: list[str] = []
    results = conform_results(results_df, notes)
    spectrum = None if spectrum_df is None else conform_spectrum(spectrum_df, notes)
    return [
        _claim_slight_noise_helps_id(results),
        _claim_noise_hurts_ood(results),
        _claim_spectrum_moves(spectrum, "sve", +1),
        _claim_spectrum_moves(spectrum, "lsvr", -1),
        _claim_nmtune_wins(results, "id"),
        _claim_nmtune_wins(results, "ood"),
    ]
