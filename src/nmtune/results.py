"""The results schema: the tables :mod:`nmtune.study` writes and :mod:`nmtune.report` reads.

A results directory holds three CSV tables and ``study.json``:

``results.csv``, one row per (noise setting, seed, task, method, test set)
    ``noise_type, noise_ratio, realised_noise_rate, seed, task, kind, train_set, test_set,
    method, protocol, accuracy, chance``, then ``fit_seconds``, ``loss_cov``, ``loss_mse``,
    ``loss_svd`` (NMTune's terms at the last epoch), ``n_test``, ``n_train``, ``selected``
    (JSON of the settings a validation search chose) and ``views``.
``spectrum.csv``, one row per (noise setting, seed, feature set)
    ``noise_type, noise_ratio, realised_noise_rate, seed, features_of``, then ``d``,
    ``effective_rank``, ``lsvr``, ``n``, ``singular_values`` (a JSON list) and ``sve``.
``pretrain.csv``, one row per pre-trained model
    ``noise_type, noise_ratio, realised_noise_rate, seed``, then the pre-training metrics
    (``eval_acc``, ``seconds``, ``train_acc_clean``, ``train_acc_noisy``, ...).

Columns are written in :data:`LEADING_COLUMNS` order, the rest alphabetically
(:func:`tidy_table`). A column name means the same in every table: its type on load is
:data:`FRACTION_COLUMNS` (floats in [0, 1]), :data:`FLOAT_COLUMNS`, or text where the table's
schema gives a text default. Accuracies and rates are fractions on disk.

Reading is forgiving where a report can still be drawn: :func:`load_results` fills a missing
optional column with its default and records a note saying what the report loses; it fails
with :class:`~nmtune._validation.NMTuneError` only on what cannot be read or is out of range.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._validation import NMTuneError

__all__ = [
    "FLOAT_COLUMNS",
    "FRACTION_COLUMNS",
    "LEADING_COLUMNS",
    "LOSS_COLUMNS",
    "PRETRAIN",
    "RESULTS",
    "SPECTRUM",
    "StudyResults",
    "TableSchema",
    "chance_level",
    "conform",
    "conform_results",
    "conform_spectrum",
    "load_results",
    "parse_singular_values",
    "tidy_table",
]

#: Leading columns of every table, in this order; the rest follow alphabetically. Cells are
#: stored as JSON with sorted keys, so a fixed order keeps fresh and cached runs identical.
LEADING_COLUMNS = (
    "noise_type", "noise_ratio", "realised_noise_rate", "seed", "task", "kind", "train_set",
    "test_set", "features_of", "method", "protocol", "accuracy", "chance",
)
#: Columns holding fractions in [0, 1], in whichever table they appear.
FRACTION_COLUMNS = (
    "noise_ratio", "accuracy", "chance", "realised_noise_rate",
    "train_acc_noisy", "train_acc_clean", "eval_acc", "lsvr",
)
#: NMTune's loss terms at the last epoch (``results.csv``; NaN for the other methods).
LOSS_COLUMNS = ("loss_mse", "loss_cov", "loss_svd")
#: Columns read as floats, in whichever table they appear.
FLOAT_COLUMNS = (*FRACTION_COLUMNS, *LOSS_COLUMNS, "sve", "effective_rank", "fit_seconds")


def tidy_table(rows: list[dict]) -> pd.DataFrame:
    """One table from row dicts, its columns in :data:`LEADING_COLUMNS` order, then sorted.

    Parameters
    ----------
    rows : list of dict
        One dict per row; rows may lack columns (the cell is then empty).

    Returns
    -------
    DataFrame
    """
    df = pd.DataFrame(rows)
    lead = [c for c in LEADING_COLUMNS if c in df.columns]
    return df[lead + sorted(set(df.columns) - set(lead))]


def chance_level(y) -> float:
    """The chance level of a test set: the share of its most frequent class.

    This is the highest accuracy a prediction that ignores the features can reach on these
    labels (always answering the majority class), so only accuracy above it shows that the
    features carry information. It equals 1/K on a test set balanced over K classes and
    exceeds it otherwise; 1/K (the expected accuracy of a uniform guess) would understate the
    bar on imbalanced sets, such as seeded subsets and shifted OOD sets, and would depend on
    the training classes rather than on the labels being scored.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        The test labels (any hashable label type).

    Returns
    -------
    float
        In (0, 1].
    """
    _, counts = np.unique(np.asarray(y), return_counts=True)
    return float(counts.max() / counts.sum())


# --------------------------------------------------------------------------------------------
# Conforming a table to its schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSchema:
    """What a reader needs of one table.

    Attributes
    ----------
    name : str
        The file name, used in messages.
    defaults : dict
        Column -> (value when the column is missing, note for the reader or None when the
        column is optional). A text default makes the column text on load.
    required : tuple of str
        Columns without which the table cannot be read.
    """

    name: str
    defaults: dict
    required: tuple[str, ...] = ()


_COMMON_DEFAULTS = {
    "noise_type": ("none", None),
    "noise_ratio": (0.0, "no 'noise_ratio' column: read as a study without a noise grid"),
    "seed": (0, "no 'seed' column: all rows read as one seed, so there is no spread over seeds"),
}
#: ``results.csv``.
RESULTS = TableSchema("results.csv", {
    **_COMMON_DEFAULTS,
    "task": ("task", "no 'task' column: all rows read as one task"),
    "kind": ("id", "no 'kind' column: all rows read as in-domain (ID)"),
    "train_set": ("", "no 'train_set' column: OOD panels cannot show their ID counterpart"),
    "test_set": ("", None),
    "protocol": ("", None),
    "chance": (np.nan, "no 'chance' column: chance level is not drawn"),
    "fit_seconds": (np.nan, "no 'fit_seconds' column: no tuning times"),
}, required=("method", "accuracy"))
#: ``spectrum.csv``.
SPECTRUM = TableSchema("spectrum.csv", {
    **_COMMON_DEFAULTS,
    "features_of": ("features", None),
    "sve": (np.nan, "spectrum.csv has no 'sve' column: the SVE claim is not testable"),
    "lsvr": (np.nan, "spectrum.csv has no 'lsvr' column: the LSVR claim is not testable"),
    "effective_rank": (np.nan, None),
    "singular_values": ("", "spectrum.csv has no 'singular_values': no spectrum figure"),
})
#: ``pretrain.csv``.
PRETRAIN = TableSchema("pretrain.csv", {
    **_COMMON_DEFAULTS,
    "realised_noise_rate": (np.nan, None),
    "train_acc_noisy": (np.nan, None),
    "train_acc_clean": (np.nan, None),
    "eval_acc": (np.nan, None),
    "seconds": (np.nan, None),
})


def conform(df: pd.DataFrame, schema: TableSchema, notes: list[str]) -> pd.DataFrame:
    """Add missing columns with their defaults, coerce types and check value ranges.

    Parameters
    ----------
    df : DataFrame
        The table as read.
    schema : TableSchema
    notes : list of str
        Appended to: one note per missing column whose absence the reader should know of.

    Returns
    -------
    DataFrame
        A conformed copy.

    Raises
    ------
    NMTuneError
        When a required column is missing, a numeric column holds text, or a fraction lies
        outside [0, 1].
    """
    missing = [c for c in schema.required if c not in df.columns]
    if missing:
        raise NMTuneError(f"{schema.name} lacks the required column(s) {missing}")
    df = df.copy()
    for column, (default, note) in schema.defaults.items():
        if column not in df.columns:
            df[column] = default
            if note:
                notes.append(f"{schema.name}: {note}")
    for column in df.columns:
        if column in schema.defaults and isinstance(schema.defaults[column][0], str):
            df[column] = df[column].fillna("").astype(str)
    for column in FLOAT_COLUMNS:
        if column in df.columns:
            df[column] = _numeric(df[column], f"{schema.name} column {column!r}")
    for column in FRACTION_COLUMNS:
        if column in df.columns:
            _check_fraction(df[column], f"{schema.name} column {column!r}")
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


def conform_results(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """:func:`conform` ``results.csv``, leaving out rows without an accuracy (failed cells).

    Raises
    ------
    NMTuneError
        As :func:`conform`; also when no row has an accuracy or ``kind`` is not id/ood.
    """
    df = conform(df, RESULTS, notes)
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


def conform_spectrum(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """:func:`conform` ``spectrum.csv`` and check every ``singular_values`` cell parses."""
    df = conform(df, SPECTRUM, notes)
    for row, text in enumerate(df["singular_values"]):
        parse_singular_values(text, row)  # fail on load, not halfway through the figures
    return df


def _conform_pretrain(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    return conform(df, PRETRAIN, notes)


def parse_singular_values(text: str, row: int) -> np.ndarray:
    """Singular values from a ``spectrum.csv`` cell's JSON list (empty when the cell is empty).

    Parameters
    ----------
    text : str
        The cell.
    row : int
        Its row, for the message.

    Returns
    -------
    ndarray of shape (m,)

    Raises
    ------
    NMTuneError
        When the cell is not a flat JSON list of finite values >= 0.
    """
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


# --------------------------------------------------------------------------------------------
# Loading a results directory
# --------------------------------------------------------------------------------------------


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
    results = conform_results(_read_csv(root / "results.csv"), notes)
    optional = {"spectrum.csv": conform_spectrum, "pretrain.csv": _conform_pretrain}
    tables = {}
    for name, conform_table in optional.items():
        path = root / name
        tables[name] = conform_table(_read_csv(path), notes) if path.is_file() else None
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
