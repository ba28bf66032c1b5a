"""The paper's claims checked against measured results: one function per claim, one verdict each.

:func:`check_claims` returns a list of :class:`Claim` (claim, verdict, evidence, statistics),
each decided by the rules in :data:`DECISION_RULES`. The accuracy claims are paired effects
from :mod:`nmtune.stats` (the one copy of the pairing: :func:`nmtune.stats.claim_differences`),
each with its 95% interval over seeds, TOST equivalence and power; the spectrum claims are rank
correlations. Each claim has its own ``_claim_*`` function that takes conformed tables and
returns one :class:`Claim`.
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
from ..stats import SLIGHT_NOISE, Effect, claim_differences, paired_effect

#: The verdicts a claim can get.
VERDICTS = ("reproduced", "contradicted", "no effect", "underpowered", "not testable")
#: A Spearman correlation counts as real below this p-value; also the effects' two-sided level.
ALPHA = 0.05
#: Power the report plans seeds for, and at which it states the minimum detectable effect.
POWER = 0.8
#: The effect size (points) the report plans for unless told otherwise.
DEFAULT_EFFECT_SIZE = 1.0
#: Method names the NMTune claim compares (lower case, as ``results.csv`` writes them).
NMTUNE, BASELINES = "nmtune", ("lp", "mlp")


def decision_rules(effect_size: float = DEFAULT_EFFECT_SIZE) -> str:
    """How the verdicts are decided, in words, for the report."""
    x = f"{effect_size:g}"
    return (
        "Accuracy differences are paired: two rows are compared only when they share seed, task, "
        "train/test sets, method and protocol (and noise setting, for method comparisons). The "
        "seed is the unit of replication (the cells of one seed share its pre-trained model): "
        "differences are averaged to one value per task and seed, and the effect is the mean "
        "over tasks of each task's mean over seeds, in accuracy points. Its 95% interval is a "
        "t-interval on the per-seed effects; a bootstrap over seeds stratified by task is shown "
        "beside it (with few seeds it has few distinct resamples and covers less than 95%, so "
        "it does not decide). Verdicts, in this order: 'reproduced' when the interval excludes "
        "0 in the claimed direction; 'contradicted' when it excludes 0 the other way; "
        f"'no effect as large as {x} pts' when two one-sided t-tests (TOST, 5%) place the "
        f"effect within ±{x} points; otherwise 'underpowered', with the seeds that would detect "
        f"an effect of {x} points with {POWER:.0%} power at the seed spread measured here. "
        f"{x} point(s) is the effect size of interest (`nmtune report --effect-size`). The "
        f"minimum detectable effect (MDE) is the effect a two-sided 5% t-test detects with "
        f"{POWER:.0%} power given the study's seeds and spread. "
        "(1) Slight noise helps ID: ID accuracy averaged over the ratios in "
        f"{SLIGHT_NOISE[0]:.0%}-{SLIGHT_NOISE[1]:.0%} minus accuracy at 0%, pooled over methods; "
        "claimed positive. (2) Noise hurts OOD: OOD accuracy at each noise type's highest ratio "
        "minus 0%; claimed negative (the Spearman correlation of accuracy with noise ratio over "
        "all ratios is shown, not used). (3) SVE rises and LSVR falls with noise: Spearman "
        "correlation of each metric with noise ratio over all pre-trained models (centred within "
        f"each features_of): 'reproduced' if in the claimed direction with p < {ALPHA:g}, "
        f"'contradicted' if opposite with p < {ALPHA:g}, else 'underpowered' (no effect in "
        "points, so no MDE). (4) NMTune beats LP and MLP: NMTune minus each baseline, paired "
        "over all cells; 'reproduced' if both effects are, 'contradicted' if either is, "
        "'no effect' if either is (and none contradicted), else 'underpowered'. A claim is "
        "'not testable' when the data lacks what it needs (no noise grid, no 0% baseline, no OOD "
        "rows, a missing method)."
    )


#: The rules at the default effect size (the report renders them at its own).
DECISION_RULES = decision_rules()


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and what the measured numbers say about it.

    Attributes
    ----------
    claim : str
        The claim, in words.
    verdict : {"reproduced", "contradicted", "no effect", "underpowered", "not testable"}
    evidence : str
        The numbers behind the verdict.
    statistics : dict of str to float
        The same numbers, machine-readable (differences in accuracy points); an accuracy
        claim's effect fields (:class:`nmtune.stats.Effect`) under ``effect.`` (``vs_lp.`` and
        ``vs_mlp.`` for NMTune's two comparisons).
    verdict_text : str
        The verdict as the report shows it ("no effect as large as 1 pts", "underpowered: 6
        seeds would detect 1 pts with 80% power"); the verdict itself when empty.
    effect : str
        The paired effect and its 95% interval in points ("" for the spectrum claims).
    mde : float
        Minimum detectable effect (points) of the study as run: the largest over the claim's
        effects; NaN when the claim has none.
    """

    claim: str
    verdict: str
    evidence: str
    statistics: dict = field(default_factory=dict)
    verdict_text: str = ""
    effect: str = ""
    mde: float = math.nan

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise NMTuneError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not self.verdict_text:
            object.__setattr__(self, "verdict_text", self.verdict)


def _interval(effect: Effect) -> str:
    if not math.isfinite(effect.low):
        return f"{effect.mean:+.2f} pts (no interval: {effect.n_seeds} seed)"
    return f"{effect.mean:+.2f} pts [{effect.low:+.2f}, {effect.high:+.2f}]"


def _verdict_text(verdict: str, effects: list[Effect]) -> str:
    margin = effects[0].margin
    if verdict == "no effect":
        return f"no effect as large as {margin:g} pts"
    if verdict != "underpowered":
        return verdict
    needed = [e.seeds_needed for e in effects if e.verdict == "underpowered"]
    if None in needed:
        return "underpowered: needs at least 2 seeds to measure the spread"
    return (f"underpowered: {max(needed)} seeds would detect {margin:g} pts with "
            f"{effects[0].power:.0%} power")


def _effect_statistics(effect: Effect, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in effect.to_dict().items()}


def _effect_claim(claim: str, effect: Effect, what: str, more: str, extra: dict) -> Claim:
    """A claim decided by one paired effect: ``what`` it compares, ``more`` evidence after."""
    return Claim(claim, effect.verdict, f"{what}: {effect.describe()}. {more}",
                 {**_effect_statistics(effect, "effect."), **extra},
                 _verdict_text(effect.verdict, [effect]), _interval(effect), effect.mde)


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


def _untestable(claim: str, why: str) -> Claim:
    return Claim(claim, "not testable", why)


def _claim_slight_noise_helps_id(diffs: dict, margin: float) -> Claim:
    claim = (
        f"Slight pre-training noise ({SLIGHT_NOISE[0]:.0%}-{SLIGHT_NOISE[1]:.0%}) "
        "improves in-domain (ID) transfer"
    )
    paired = diffs.get("slight noise helps ID")
    if paired is None:
        return _untestable(claim, "needs ID accuracy at 0% and at 5-10% noise for the same cells")
    effect = paired_effect(paired, sign=1, margin=margin, alpha=ALPHA, power=POWER)
    per_method = paired.groupby("method")["diff"].mean()
    more = "Mean per method: " + "; ".join(f"{m} {v:+.2f} pts" for m, v in per_method.items())
    return _effect_claim(claim, effect, "ID accuracy at 5-10% minus 0%, pooled over methods",
                         more + ".", {f"{m}.mean_diff_pts": float(v)
                                      for m, v in per_method.items()})


def _claim_noise_hurts_ood(results: pd.DataFrame, diffs: dict, margin: float) -> Claim:
    claim = "Pre-training noise hurts out-of-domain (OOD) transfer"
    rows = results[results["kind"] == "ood"]
    if rows.empty:
        return _untestable(claim, "no OOD rows in results.csv")
    paired = diffs.get("noise hurts OOD")
    if paired is None:
        return _untestable(claim, "needs OOD accuracy at 0% and a noisy ratio for the same cells")
    effect = paired_effect(paired, sign=-1, margin=margin, alpha=ALPHA, power=POWER)
    series = [c for c in ("task", "train_set", "test_set", "method", "protocol") if c in rows]
    rho, p, n = _within_spearman(rows, "accuracy", series)
    noisy = rows[rows["noise_ratio"] > 0]
    top = ", ".join(f"{t} {r:.0%}" for t, r in
                    noisy.groupby("noise_type")["noise_ratio"].max().items())
    return _effect_claim(claim, effect, f"OOD accuracy at the highest ratio ({top}) minus 0%",
                         "Accuracy vs noise ratio within each series (not used by the verdict): "
                         f"{_describe_rho(rho, p, n)}.",
                         {"spearman_rho": rho, "spearman_p": p, "spearman_n": n})


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
    verdict = {1: "reproduced", -1: "contradicted", 0: "underpowered"}[direction]
    text = "underpowered: no significant rank correlation" if direction == 0 else verdict
    statistics = {"spearman_rho": rho, "spearman_p": p, "spearman_n": n}
    return Claim(claim, verdict, evidence, statistics, text)


def _combined_verdict(effects: list[Effect]) -> str:
    """NMTune must beat every baseline: one contradiction or null effect decides."""
    verdicts = [e.verdict for e in effects]
    for verdict in ("contradicted", "no effect", "underpowered"):
        if verdict in verdicts:
            return verdict
    return "reproduced"


def _claim_nmtune_wins(results: pd.DataFrame, diffs: dict, kind: str, margin: float) -> Claim:
    domain = {"id": "in-domain (ID)", "ood": "out-of-domain (OOD)"}[kind]
    claim = f"NMTune beats LP and MLP {domain}"
    methods = set(results.loc[results["kind"] == kind, "method"].str.lower())
    present = [b for b in BASELINES if b in methods]
    if NMTUNE not in methods or not present:
        return _untestable(claim, f"needs {kind.upper()} rows for nmtune and lp or mlp")
    effects = {b: paired_effect(diffs[name], sign=1, margin=margin, alpha=ALPHA, power=POWER)
               for b in present
               if (name := f"NMTune beats {b.upper()} ({kind.upper()})") in diffs}
    if not effects:
        return _untestable(claim, f"nmtune and lp/mlp never share a {kind.upper()} cell")
    evidence = "; ".join(f"NMTune - {b.upper()}: {e.describe()}" for b, e in effects.items())
    absent = [b.upper() for b in BASELINES if b not in effects]
    if absent:
        evidence += f"; no {', '.join(absent)} rows to compare against"
    verdict = _combined_verdict(list(effects.values()))
    statistics = {}
    for baseline, effect in effects.items():
        statistics.update(_effect_statistics(effect, f"vs_{baseline}."))
    shown = "; ".join(f"vs {b.upper()} {_interval(e)}" for b, e in effects.items())
    return Claim(claim, verdict, evidence + ".", statistics,
                 _verdict_text(verdict, list(effects.values())), shown,
                 max(e.mde for e in effects.values()))


def check_claims(results_df: pd.DataFrame, spectrum_df: pd.DataFrame | None = None, *,
                 effect_size: float = DEFAULT_EFFECT_SIZE) -> list[Claim]:
    """Check the paper's claims against measured results.

    Accuracy claims are paired effects (:func:`nmtune.stats.paired_effect` on
    :func:`nmtune.stats.claim_differences`): the effect in points with its 95% t-interval over
    seeds, decided "reproduced" / "contradicted" when the interval excludes 0 in / against the
    claimed direction, "no effect" when TOST places it within ``±effect_size``, else
    "underpowered" with the seeds that would detect ``effect_size`` points at 80% power.

    1. Slight noise helps ID: ID accuracy averaged over ratios in ``SLIGHT_NOISE`` (5-10%)
       minus 0%, pooled over methods; claimed positive.
    2. Noise hurts OOD: OOD accuracy at each noise type's highest ratio minus 0%; claimed
       negative. The Spearman correlation of accuracy with noise ratio (centred within each
       task x method x protocol series) is reported beside it.
    3. SVE increases / LSVR decreases with noise (two claims): Spearman correlation of the
       metric with noise ratio over all models (centred within each ``features_of``):
       "reproduced" if in the claimed direction with ``p < ALPHA`` (0.05), "contradicted" if
       opposite with ``p < ALPHA``, else "underpowered".
    4. NMTune beats LP and MLP, ID and OOD (two claims): NMTune minus each baseline, paired
       over all cells; "reproduced" if both effects are, otherwise the first of
       "contradicted", "no effect", "underpowered" that either effect gets.

    A claim is "not testable" when the data lacks what it needs (no noise grid, no 0%
    baseline, no OOD rows, no spectrum, a missing method).

    Parameters
    ----------
    results_df : DataFrame
        ``results.csv`` rows (at least ``method`` and ``accuracy``; see :func:`load_results`).
    spectrum_df : DataFrame or None
        ``spectrum.csv`` rows (``noise_ratio``, ``sve``, ``lsvr``, ``features_of``).
    effect_size : float > 0
        The smallest effect of interest in points: the equivalence margin and the effect the
        seeds-needed figure plans for.

    Returns
    -------
    list of Claim
        Six claims, in the order above (3 and 4 split in two).
    """
    if isinstance(effect_size, bool) or not (isinstance(effect_size, int | float)
                                             and 0 < effect_size <= 100):
        # Accuracies differ by at most 100 points: a wider margin makes "no effect" vacuous.
        raise NMTuneError(f"effect size must be a number of points in (0, 100], "
                          f"got {effect_size!r}")
    notes: list[str] = []
    results = conform_results(results_df, notes)
    spectrum = None if spectrum_df is None else conform_spectrum(spectrum_df, notes)
    diffs = claim_differences(results)
    return [
        _claim_slight_noise_helps_id(diffs, effect_size),
        _claim_noise_hurts_ood(results, diffs, effect_size),
        _claim_spectrum_moves(spectrum, "sve", +1),
        _claim_spectrum_moves(spectrum, "lsvr", -1),
        _claim_nmtune_wins(results, diffs, "id", effect_size),
        _claim_nmtune_wins(results, diffs, "ood", effect_size),
    ]
