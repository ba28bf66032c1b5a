"""Study report: the paper's claims checked against a results directory, with tables and figures.

:func:`build_report` reads what :mod:`nmtune.study` writes (``results.csv``, ``spectrum.csv``,
``pretrain.csv``, ``study.json``) and writes ``report.html`` (self-contained: figures embedded
as base64 PNG, inline CSS), ``report.md`` (figures as PNG files in ``figures/``) and
``claims.json``. :func:`check_claims` states, for each claim of Chen et al. (ICLR 2024), whether
the measured numbers reproduce it, by the fixed rules in its docstring.

Accuracies are fractions in [0, 1] on disk and percentage points ("pts") in the report. A
missing optional file or column degrades the report (a figure, table or claim is left out and a
note says why) instead of failing it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from ._io import write_bytes_atomic, write_json_atomic
from ._validation import NMTuneError

__all__ = [
    "DECISION_RULES",
    "VERDICTS",
    "Claim",
    "StudyResults",
    "build_report",
    "check_claims",
    "load_results",
    "summarise_accuracy",
    "summary_table",
]

#: The four verdicts a claim can get.
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable")
#: A paired mean difference counts as real when it is larger than this many standard errors
#: (about a two-sided 95% interval for a normal mean).
SE_MULTIPLE = 2.0
#: A Spearman correlation counts as real below this p-value.
ALPHA = 0.05
#: The paper's "slight" pre-training noise: ratios in this closed interval.
SLIGHT_NOISE = (0.05, 0.10)
#: Leading singular values drawn in the spectrum figure.
N_SPECTRUM = 64
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


# --------------------------------------------------------------------------------------------
# Loading and conforming the results directory
# --------------------------------------------------------------------------------------------

#: Column -> (default when missing, note for the reader or None when the column is optional).
_COMMON_COLUMNS = {
    "noise_type": ("none", None),
    "noise_ratio": (0.0, "no 'noise_ratio' column: read as a study without a noise grid"),
    "seed": (0, "no 'seed' column: all rows read as one seed, so there is no spread over seeds"),
}
_RESULTS_COLUMNS = {
    **_COMMON_COLUMNS,
    "task": ("task", "no 'task' column: all rows read as one task"),
    "kind": ("id", "no 'kind' column: all rows read as in-domain (ID)"),
    "train_set": ("", "no 'train_set' column: OOD panels cannot show their ID counterpart"),
    "test_set": ("", None),
    "protocol": ("", None),
    "chance": (np.nan, "no 'chance' column: chance level is not drawn"),
    "fit_seconds": (np.nan, "no 'fit_seconds' column: no tuning times"),
}
_SPECTRUM_COLUMNS = {
    **_COMMON_COLUMNS,
    "features_of": ("features", None),
    "sve": (np.nan, "spectrum.csv has no 'sve' column: the SVE claim is not testable"),
    "lsvr": (np.nan, "spectrum.csv has no 'lsvr' column: the LSVR claim is not testable"),
    "effective_rank": (np.nan, None),
    "singular_values": ("", "spectrum.csv has no 'singular_values': no spectrum figure"),
}
_PRETRAIN_COLUMNS = {
    **_COMMON_COLUMNS,
    "realised_noise_rate": (np.nan, None),
    "train_acc_noisy": (np.nan, None),
    "train_acc_clean": (np.nan, None),
    "eval_acc": (np.nan, None),
    "seconds": (np.nan, None),
}
_FRACTION_COLUMNS = (
    "noise_ratio", "accuracy", "chance", "realised_noise_rate",
    "train_acc_noisy", "train_acc_clean", "eval_acc", "lsvr",
)
_LOSS_COLUMNS = ("loss_mse", "loss_cov", "loss_svd")


@dataclass
class StudyResults:
    """The tables of one results directory, conformed to the schema :mod:`nmtune.study` writes.

    Attributes
    ----------
    results : DataFrame, one row per evaluated cell
    spectrum : DataFrame or None, one row per (noise setting, seed, features_of)
    pretrain : DataFrame or None, one row per pre-trained model
    meta : dict
        ``study.json`` (config and run metadata); empty when absent.
    notes : list of str
        What was missing and how the report degrades because of it.
    """

    results: pd.DataFrame
    spectrum: pd.DataFrame | None
    pretrain: pd.DataFrame | None
    meta: dict
    notes: list[str] = field(default_factory=list)

    @property
    def has_noise_grid(self) -> bool:
        """True when the study varied the pre-training noise ratio (at least two ratios)."""
        return self.results["noise_ratio"].nunique() > 1


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise NMTuneError(f"{path} is not a readable CSV table: {exc}") from None


def _conform(df: pd.DataFrame, columns: dict, name: str, notes: list[str]) -> pd.DataFrame:
    """Add missing columns with their defaults, coerce types and check value ranges."""
    df = df.copy()
    for column, (default, note) in columns.items():
        if column not in df.columns:
            df[column] = default
            if note:
                notes.append(f"{name}: {note}")
    for column in df.columns:
        if column in columns and isinstance(columns[column][0], str):
            df[column] = df[column].fillna("").astype(str)
    for column in (*_FRACTION_COLUMNS, *_LOSS_COLUMNS, "sve", "effective_rank", "fit_seconds"):
        if column in df.columns:
            df[column] = _numeric(df[column], f"{name} column {column!r}")
    for column in _FRACTION_COLUMNS:
        if column in df.columns:
            _check_fraction(df[column], f"{name} column {column!r}")
    return df


def _numeric(values: pd.Series, what: str) -> pd.Series:
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna()
    if bad.any():
        raise NMTuneError(f"{what} must be numeric; got {values[bad].iloc[0]!r}")
    return converted.astype(float)


def _check_fraction(values: pd.Series, what: str) -> None:
    outside = values[(values < 0) | (values > 1)]
    if len(outside):
        raise NMTuneError(
            f"{what} must hold fractions in [0, 1], got {outside.iloc[0]!r} "
            "(percentages? divide by 100)"
        )


def _conform_results(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    missing = [c for c in ("method", "accuracy") if c not in df.columns]
    if missing:
        raise NMTuneError(f"results.csv lacks the required column(s) {missing}")
    df = _conform(df, _RESULTS_COLUMNS, "results.csv", notes)
    failed = df["accuracy"].isna()
    if failed.any():
        notes.append(f"results.csv: {int(failed.sum())} row(s) without an accuracy left out")
        df = df[~failed]
    if df.empty:
        raise NMTuneError("results.csv has no rows with an accuracy")
    df["method"] = df["method"].astype(str)
    df["kind"] = df["kind"].str.strip().str.lower()
    unknown = sorted(set(df["kind"]) - {"id", "ood"})
    if unknown:
        raise NMTuneError(f"results.csv column 'kind' must be 'id' or 'ood', got {unknown}")
    return df.reset_index(drop=True)


def _conform_spectrum(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    df = _conform(df, _SPECTRUM_COLUMNS, "spectrum.csv", notes)
    for row, text in enumerate(df["singular_values"]):
        _parse_spectrum(text, row)  # fail on load, not halfway through the figures
    return df


def _parse_spectrum(text: str, row: int) -> np.ndarray:
    """Singular values from their JSON list (empty when the cell is empty)."""
    if not text:
        return np.empty(0)
    try:
        values = np.asarray(json.loads(text), dtype=float)
    except (json.JSONDecodeError, TypeError, ValueError):
        raise NMTuneError(
            f"spectrum.csv row {row}: singular_values is not a JSON list of numbers: {text[:60]!r}"
        ) from None
    if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise NMTuneError(
            f"spectrum.csv row {row}: singular_values must be a flat list of finite values >= 0"
        )
    return values


def load_results(results_dir: str | os.PathLike) -> StudyResults:
    """Read a results directory written by :mod:`nmtune.study`.

    Parameters
    ----------
    results_dir : path
        Must hold ``results.csv``; ``spectrum.csv``, ``pretrain.csv`` and ``study.json`` are
        optional.

    Returns
    -------
    StudyResults

    Raises
    ------
    NMTuneError
        When the directory or ``results.csv`` is missing or unreadable, or values are out of
        range (accuracy or noise ratio outside [0, 1], ``kind`` other than id/ood).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise NMTuneError(f"results directory not found: {root}")
    if not (root / "results.csv").is_file():
        raise NMTuneError(f"{root} has no results.csv; run `nmtune study` to produce one")
    notes: list[str] = []
    results = _conform_results(_read_csv(root / "results.csv"), notes)
    optional = {
        "spectrum.csv": _conform_spectrum,
        "pretrain.csv": lambda df, n: _conform(df, _PRETRAIN_COLUMNS, "pretrain.csv", n),
    }
    tables = {}
    for name, conform in optional.items():
        path = root / name
        tables[name] = conform(_read_csv(path), notes) if path.is_file() else None
    if tables["spectrum.csv"] is None:
        notes.append("no spectrum.csv: no spectrum figures, tables or SVE/LSVR claims")
    meta = {}
    if (root / "study.json").is_file():
        try:
            meta = json.loads((root / "study.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NMTuneError(f"{root / 'study.json'} is not valid JSON: {exc}") from None
    else:
        notes.append("no study.json: no configuration or run metadata")
    return StudyResults(results, tables["spectrum.csv"], tables["pretrain.csv"], meta, notes)


# --------------------------------------------------------------------------------------------
# Claim checks
# --------------------------------------------------------------------------------------------


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
    results = _conform_results(results_df, notes)
    spectrum = None if spectrum_df is None else _conform_spectrum(spectrum_df, notes)
    return [
        _claim_slight_noise_helps_id(results),
        _claim_noise_hurts_ood(results),
        _claim_spectrum_moves(spectrum, "sve", +1),
        _claim_spectrum_moves(spectrum, "lsvr", -1),
        _claim_nmtune_wins(results, "id"),
        _claim_nmtune_wins(results, "ood"),
    ]


# --------------------------------------------------------------------------------------------
# Summaries and tables
# --------------------------------------------------------------------------------------------


def _share_clean_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Copy 0% rows filed under a clean-only noise type (e.g. "none") to every noisy type.

    The clean model belongs at the 0% point of every noise type's curve; without the copy it
    would be a lone point of its own.
    """
    noisy_types = sorted(set(df.loc[df["noise_ratio"] > 0, "noise_type"]))
    clean_only = ~df["noise_type"].isin(noisy_types)
    if not noisy_types or not clean_only.any():
        return df
    copies = [df[clean_only].assign(noise_type=t) for t in noisy_types]
    return pd.concat([df[~clean_only], *copies], ignore_index=True)


def _with_series(results: pd.DataFrame) -> pd.DataFrame:
    """Add ``series``: the method, with its protocol where that method ran under several, and
    the noise type where the study has several."""
    df = _share_clean_rows(results)
    several = df.groupby("method")["protocol"].transform("nunique") > 1
    series = df["method"].where(~several, df["method"] + " (" + df["protocol"] + ")")
    if df["noise_type"].nunique() > 1:
        series = series + ", " + df["noise_type"]
    return df.assign(series=series)


def summarise_accuracy(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of accuracy over seeds for each task, series and noise setting.

    Parameters
    ----------
    results : DataFrame
        Conformed ``results.csv`` rows (:attr:`StudyResults.results`).

    Returns
    -------
    DataFrame
        Columns ``kind, task, train_set, series, noise_type, noise_ratio, mean, std, n,
        chance``; ``mean``/``std`` in accuracy points, ``std`` NaN for a single seed.
    """
    keys = ["kind", "task", "train_set", "series", "noise_type", "noise_ratio"]
    grouped = _with_series(results).groupby(keys)
    summary = grouped["accuracy"].agg(["mean", "std", "count"]).mul([100, 100, 1])
    summary["chance"] = 100 * grouped["chance"].mean()
    return summary.rename(columns={"count": "n"}).reset_index()


def summary_table(results: pd.DataFrame) -> str:
    """Accuracy "mean ± std (n seeds)" per task, noise setting and method, as plain text.

    Parameters
    ----------
    results : DataFrame
        ``results.csv`` rows (see :func:`load_results`).

    Returns
    -------
    str
        A fixed-width table for the terminal.
    """
    conformed = _conform_results(results, [])
    grid = conformed["noise_ratio"].nunique() > 1
    return _accuracy_table(summarise_accuracy(conformed), grid).to_string(index=False)


def _mean_std(mean: float, std: float, n: int | None = None, digits: int = 1) -> str:
    """"mean ± std (n)"; a single seed has no std and shows the mean alone."""
    text = f"{mean:.{digits}f}"
    if math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    return f"{text} ({n})" if n is not None else text


def _percent(values: pd.Series) -> pd.Series:
    return values.map(lambda r: f"{100 * r:g}%")


def _accuracy_table(summary: pd.DataFrame, grid: bool) -> pd.DataFrame:
    """Accuracy "mean ± std (n seeds)" with one column per series."""
    index = ["kind", "task", "noise_type", "noise_ratio"] if grid else ["kind", "task"]
    cells = summary.assign(
        cell=[_mean_std(m, s, int(n)) for m, s, n in zip(summary["mean"], summary["std"],
                                                       summary["n"], strict=True)]
    )
    table = cells.pivot_table(index=index, columns="series", values="cell", aggfunc="first")
    table = table.fillna("–").reset_index()
    table.columns.name = None
    table = table.rename(columns={"noise_type": "noise type", "noise_ratio": "noise ratio"})
    table["kind"] = table["kind"].str.upper()
    if grid:
        table["noise ratio"] = _percent(table["noise ratio"])
    return table


def _grouped_mean_std(df: pd.DataFrame, by: list[str], columns: dict, digits: dict) -> pd.DataFrame:
    """One row per ``by`` group: "mean ± std" of each column (renamed by ``columns``) and n."""
    grouped = df.groupby(by)
    table = grouped.size().rename("n").to_frame()
    for column, title in columns.items():
        agg = grouped[column].agg(["mean", "std"])
        table[title] = [_mean_std(m, s, digits=digits.get(column, 3)) for m, s in agg.values]
    return table.reset_index()


def _spectrum_table(spectrum: pd.DataFrame) -> pd.DataFrame:
    table = _grouped_mean_std(
        _share_clean_rows(spectrum),
        ["features_of", "noise_type", "noise_ratio"],
        {"sve": "SVE", "lsvr": "LSVR", "effective_rank": "effective rank"},
        {"effective_rank": 1},
    )
    if "d" in spectrum:
        dims = spectrum.groupby("features_of")["d"].first()
        table["d"] = dims.reindex(table["features_of"]).to_numpy()
    return table.assign(noise_ratio=_percent(table["noise_ratio"]))


def _pretrain_table(pretrain: pd.DataFrame) -> pd.DataFrame:
    scaled = pretrain.assign(
        **{c: 100 * pretrain[c] for c in
           ("realised_noise_rate", "train_acc_noisy", "train_acc_clean", "eval_acc")}
    )
    table = _grouped_mean_std(
        scaled,
        ["noise_type", "noise_ratio"],
        {
            "realised_noise_rate": "realised noise %",
            "train_acc_noisy": "train acc (noisy labels) %",
            "train_acc_clean": "train acc (clean labels) %",
            "eval_acc": "eval acc %",
            "seconds": "seconds",
        },
        {"realised_noise_rate": 2, "train_acc_noisy": 1, "train_acc_clean": 1, "eval_acc": 1,
         "seconds": 0},
    )
    table["noise_ratio"] = _percent(table["noise_ratio"])
    return table.rename(columns={"noise_ratio": "requested noise"})


def _loss_table(results: pd.DataFrame) -> pd.DataFrame | None:
    losses = [c for c in _LOSS_COLUMNS if c in results and results[c].notna().any()]
    if not losses:
        return None
    rows = _with_series(results).dropna(subset=losses, how="all")
    table = rows.groupby(["series", "noise_type", "noise_ratio"])[losses].mean().reset_index()
    for column in losses:
        table[column] = table[column].map(lambda v: f"{v:.3g}")
    return table.assign(noise_ratio=_percent(table["noise_ratio"]))


def _fits(results: pd.DataFrame) -> pd.DataFrame:
    """One row per fitted tuner: a study evaluates one fit on its ID and all OOD test sets."""
    key = [c for c in ("noise_type", "noise_ratio", "seed", "train_set", "method", "protocol")
           if c in results]
    return results.drop_duplicates(key) if "train_set" in key else results


def _timing_table(results: pd.DataFrame) -> pd.DataFrame | None:
    if results["fit_seconds"].isna().all():
        return None
    grouped = _with_series(_fits(results)).groupby("series")["fit_seconds"]
    table = grouped.agg(["count", "mean", "sum"]).reset_index()
    table.columns = ["series", "fits", "mean seconds per fit", "total seconds"]
    return table.round({"mean seconds per fit": 2, "total seconds": 1})


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _panels(n: int, width: float = 4.3, height: float = 3.3) -> tuple[Figure, list]:
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _colours(labels) -> dict:
    palette = [f"C{i}" for i in range(10)]
    return {label: palette[i % 10] for i, label in enumerate(sorted(set(labels)))}


def _draw_curves(ax, rows: pd.DataFrame, colours: dict, style: dict, suffix: str = "") -> None:
    for series, curve in rows.groupby("series"):
        curve = curve.sort_values("noise_ratio")
        ax.errorbar(
            100 * curve["noise_ratio"], curve["mean"], yerr=curve["std"].fillna(0),
            color=colours[series], capsize=3, label=f"{series}{suffix}", **style,
        )


def _id_counterpart(summary: pd.DataFrame, train_set: str) -> pd.DataFrame:
    """ID curves of the first ID task trained on ``train_set`` (empty when none or unknown)."""
    ids = summary[(summary["kind"] == "id") & (summary["train_set"] == train_set)]
    if not train_set or ids.empty:
        return ids
    return ids[ids["task"] == sorted(ids["task"])[0]]


def _plot_accuracy_vs_noise(summary: pd.DataFrame, kind: str) -> Figure | None:
    """Panels per task: accuracy vs noise ratio, one line per series, mean ± std over seeds."""
    rows = summary[summary["kind"] == kind]
    if rows.empty:
        return None
    tasks = sorted(rows["task"].unique())
    colours = _colours(summary["series"])
    fig, axes = _panels(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        panel = rows[rows["task"] == task]
        _draw_curves(ax, panel, colours, {"marker": "o"})
        if kind == "ood":
            reference = _id_counterpart(summary, panel["train_set"].iloc[0])
            if len(reference):
                label = f" (ID: {reference['task'].iloc[0]})"
                _draw_curves(ax, reference, colours, {"linestyle": ":", "alpha": 0.6}, label)
            chance = panel["chance"].mean()
            if math.isfinite(chance):
                ax.axhline(chance, color="grey", linestyle="--", label="chance")
        ax.set(title=f"{task} ({kind.upper()})", xlabel="pre-training noise ratio (%)",
               ylabel="accuracy (%)")
        ax.legend(fontsize="x-small")
    return fig


def _plot_spectrum_metrics(spectrum: pd.DataFrame) -> Figure:
    """SVE and LSVR vs noise ratio, one line per feature set and noise type, mean ± std."""
    df = _share_clean_rows(spectrum)
    df = df.assign(series=df["features_of"] + ", " + df["noise_type"])
    fig, axes = _panels(2)
    colours = _colours(df["series"])
    for ax, metric in zip(axes, ("sve", "lsvr"), strict=True):
        agg = df.groupby(["series", "noise_ratio"])[metric].agg(["mean", "std"]).reset_index()
        _draw_curves(ax, agg, colours, {"marker": "o"})
        ax.set(title=f"{metric.upper()} vs noise", xlabel="pre-training noise ratio (%)",
               ylabel=metric.upper())
        ax.legend(fontsize="x-small")
    return fig


def _normalised_spectrum(values: list[np.ndarray]) -> np.ndarray:
    """Seed-mean of σ_i / Σσ over the leading values that every seed has (up to N_SPECTRUM)."""
    k = min(N_SPECTRUM, *(len(v) for v in values))
    return np.mean([v[:k] / v.sum() for v in values], axis=0)


def _plot_spectra(spectrum: pd.DataFrame) -> Figure | None:
    """Panels per feature set: normalised singular values (log scale), one curve per setting."""
    values = [_parse_spectrum(text, row) for row, text in enumerate(spectrum["singular_values"])]
    df = spectrum.assign(singular_values=values)
    df = df[[len(v) > 0 and v.sum() > 0 for v in values]]
    if df.empty:
        return None
    feature_sets = sorted(df["features_of"].unique())
    fig, axes = _panels(len(feature_sets))
    ratios = sorted(df["noise_ratio"].unique())
    for ax, features_of in zip(axes, feature_sets, strict=True):
        groups = df[df["features_of"] == features_of].groupby(["noise_type", "noise_ratio"])
        for (noise_type, ratio), group in groups:
            curve = _normalised_spectrum(list(group["singular_values"]))
            shade = ratios.index(ratio) / max(1, len(ratios) - 1)
            ax.semilogy(np.arange(1, len(curve) + 1), curve,
                        color=colormaps["viridis"](0.9 * shade),
                        label=f"{noise_type} {100 * ratio:g}%")
        ax.set(title=features_of, xlabel="index i", ylabel="σ_i / Σσ")
        ax.legend(fontsize="x-small")
    return fig


def _plot_method_bars(summary: pd.DataFrame) -> Figure:
    """Without a noise grid: grouped bars of accuracy per task, one bar per series, ± std."""
    kinds = [k for k in ("id", "ood") if (summary["kind"] == k).any()]
    fig, axes = _panels(len(kinds), width=5.5)
    colours = _colours(summary["series"])
    series = sorted(summary["series"].unique())
    width = 0.8 / len(series)
    for ax, kind in zip(axes, kinds, strict=True):
        rows = summary[summary["kind"] == kind]
        tasks = sorted(rows["task"].unique())
        for i, name in enumerate(series):
            bars = rows[rows["series"] == name].set_index("task").reindex(tasks)
            x = np.arange(len(tasks)) + (i - (len(series) - 1) / 2) * width
            ax.bar(x, bars["mean"], width, yerr=bars["std"].fillna(0), capsize=3,
                   color=colours[name], label=name)
        chance = rows.groupby("task")["chance"].mean().reindex(tasks)
        for x, level in enumerate(chance):
            if math.isfinite(level):
                ax.hlines(level, x - 0.45, x + 0.45, colors="grey", linestyles="--")
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=20, ha="right")
        ax.set(title=f"{kind.upper()} accuracy (dashed: chance)", ylabel="accuracy (%)")
        ax.legend(fontsize="x-small")
    return fig


# --------------------------------------------------------------------------------------------
# Document model and its two renderings
# --------------------------------------------------------------------------------------------


def _markdown_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int = 2

    def to_markdown(self, figure_dir: str) -> str:
        return f"{'#' * self.level} {self.text}"

    def to_html(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class _Paragraph:
    text: str

    def to_markdown(self, figure_dir: str) -> str:
        return self.text

    def to_html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"


@dataclass(frozen=True)
class _Bullets:
    items: list[str]

    def to_markdown(self, figure_dir: str) -> str:
        return "\n".join(f"- {_markdown_cell(item)}" for item in self.items)

    def to_html(self) -> str:
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in self.items) + "</ul>"


@dataclass(frozen=True)
class _Table:
    frame: pd.DataFrame

    def to_markdown(self, figure_dir: str) -> str:
        rows = [[_markdown_cell(c) for c in self.frame.columns]]
        rows += [[_markdown_cell(v) for v in row] for row in self.frame.itertuples(index=False)]
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "---|" * len(self.frame.columns))
        return "\n".join(lines)

    def to_html(self) -> str:
        columns = list(self.frame.columns)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = []
        for row in self.frame.itertuples(index=False):
            cells = []
            for column, value in zip(columns, row, strict=True):
                # Verdict cells get a colour class: the eye finds the outcome first.
                verdict = str(value).replace(" ", "-")
                css = f' class="verdict-{verdict}"' if column == "verdict" else ""
                cells.append(f"<td{css}>{html.escape(str(value))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass(frozen=True)
class _Image:
    name: str
    png: bytes
    caption: str

    def to_markdown(self, figure_dir: str) -> str:
        return f"![{self.caption}]({figure_dir}/{self.name}.png)\n\n*{self.caption}*"

    def to_html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return (
            f'<figure><img alt="{html.escape(self.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(self.caption)}</figcaption></figure>"
        )


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(float(seconds), 60)
    return f"{seconds:.0f} s ({int(minutes)} min {secs:.0f} s)" if minutes else f"{secs:.1f} s"


def _compact(value, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fact(key: str, value) -> str:
    # Run times are stored in seconds; long ones read better with minutes beside them.
    if key.endswith("seconds") and isinstance(value, int | float):
        return f"{key.replace('_', ' ')}: {_format_seconds(value)}"
    return f"{key.replace('_', ' ')}: {_compact(value)}"


def _header(study: StudyResults, name: str) -> list:
    results, meta = study.results, study.meta
    facts = [f"seeds: {', '.join(str(s) for s in sorted(results['seed'].unique()))}"]
    facts += [_fact(k, v) for k, v in meta.items() if k not in ("config", "name")]
    if not any(k.endswith("seconds") for k in meta):
        recorded = _fits(results)["fit_seconds"].sum()
        if study.pretrain is not None:
            recorded += study.pretrain["seconds"].sum()
        facts.append(_fact("recorded_fit_and_pretraining_seconds", float(recorded)))
    blocks = [_Heading(f"nmtune study report: {name}", 1), _Bullets(facts)]
    config = meta.get("config")
    if isinstance(config, dict) and config:
        blocks += [_Heading("Configuration", 3),
                   _Bullets([f"{k}: {_compact(v)}" for k, v in config.items()])]
    if study.notes:
        blocks += [_Heading("Notes on the data", 3), _Bullets(study.notes)]
    return blocks


def _claims_blocks(claims: list[Claim]) -> list:
    table = pd.DataFrame(
        {"claim": [c.claim for c in claims], "verdict": [c.verdict for c in claims],
         "evidence": [c.evidence for c in claims]}
    )
    return [_Heading("The paper's claims"), _Table(table),
            _Paragraph("How the verdicts are decided. " + DECISION_RULES)]


def _figure_blocks(study: StudyResults, summary: pd.DataFrame) -> list:
    figures = []
    if study.has_noise_grid:
        figures += [
            ("id_accuracy", _plot_accuracy_vs_noise(summary, "id"),
             "ID accuracy vs pre-training noise ratio (mean ± std over seeds)."),
            ("ood_accuracy", _plot_accuracy_vs_noise(summary, "ood"),
             "OOD accuracy vs noise ratio; dashed: chance; dotted: the ID counterpart."),
        ]
    else:
        figures.append(("method_comparison", _plot_method_bars(summary),
                        "Accuracy per task and method (mean ± std over seeds)."))
    spectrum = study.spectrum
    if spectrum is not None and spectrum["noise_ratio"].nunique() > 1:
        figures.append(("spectrum_metrics", _plot_spectrum_metrics(spectrum),
                        "SVE and LSVR of the features vs noise ratio (mean ± std over seeds)."))
    if spectrum is not None:
        figures.append(("singular_values", _plot_spectra(spectrum),
                        f"Normalised singular values σ_i/Σσ (first {N_SPECTRUM}, seed mean)."))
    return [_Image(name, _png(fig), caption) for name, fig, caption in figures if fig is not None]


def _table_blocks(study: StudyResults, summary: pd.DataFrame) -> list:
    sections = [("Accuracy (%), mean ± std (n seeds)",
                 _accuracy_table(summary, study.has_noise_grid))]
    if study.pretrain is not None:
        sections.append(("Pre-training (requested vs realised noise)",
                         _pretrain_table(study.pretrain)))
    if study.spectrum is not None:
        sections.append(("Feature spectrum, mean ± std over seeds",
                         _spectrum_table(study.spectrum)))
    sections.append(("NMTune term magnitudes (final epoch, mean)", _loss_table(study.results)))
    sections.append(("Tuning time", _timing_table(study.results)))
    blocks = []
    for title, table in sections:
        if table is not None:
            blocks += [_Heading(title, 3), _Table(table)]
    return blocks


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
table { border-collapse: collapse; margin: .8em 0 1.5em; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; }
.verdict-reproduced { color: #11691f; font-weight: bold; }
.verdict-not-reproduced { color: #a11; font-weight: bold; }
.verdict-inconclusive { color: #a66800; font-weight: bold; }
.verdict-not-testable { color: #666; font-weight: bold; }
"""


def _render_markdown(blocks: list, figure_dir: str) -> str:
    return "\n\n".join(block.to_markdown(figure_dir) for block in blocks) + "\n"


def _render_html(blocks: list, title: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(block.to_html() for block in blocks)
        + "\n</body></html>\n"
    )


def _json_safe(record: dict) -> dict:
    """NaN statistics become null: strict JSON has no NaN."""
    record["statistics"] = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in record["statistics"].items()
    }
    return record


def build_report(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write the study report for a results directory.

    Parameters
    ----------
    results_dir : path
        Directory written by :mod:`nmtune.study` (see :func:`load_results`).
    out_dir : path, optional
        Where to write; defaults to ``results_dir``.

    Returns
    -------
    dict of str to Path
        ``"html"`` (``report.html``, self-contained), ``"markdown"`` (``report.md``),
        ``"figures"`` (the ``figures/`` directory beside it) and ``"claims"``
        (``claims.json``). Every file is written atomically.
    """
    study = load_results(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    name = str(study.meta.get("name") or Path(results_dir).resolve().name)
    claims = check_claims(study.results, study.spectrum)
    summary = summarise_accuracy(study.results)
    blocks = [
        *_header(study, name),
        *_claims_blocks(claims),
        _Heading("Figures"),
        *_figure_blocks(study, summary),
        _Heading("Tables"),
        *_table_blocks(study, summary),
    ]
    paths = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "figures": out / "figures",
        "claims": out / "claims.json",
    }
    for block in blocks:
        if isinstance(block, _Image):
            write_bytes_atomic(paths["figures"] / f"{block.name}.png", block.png)
    write_bytes_atomic(paths["markdown"], _render_markdown(blocks, "figures").encode())
    write_bytes_atomic(paths["html"], _render_html(blocks, f"nmtune report: {name}").encode())
    write_json_atomic(paths["claims"], [_json_safe(asdict(c)) for c in claims])
    return paths
