"""Summaries and tables of a study's results: accuracy over seeds, spectrum, pre-training, time.

The functions take conformed tables (:mod:`nmtune.results`; :func:`summary_table` conforms
its own input) and return tables ready to print: accuracies in percentage points, cells
"mean ± std (n seeds)".
"""

from __future__ import annotations

import math

import pandas as pd

from ..results import LOSS_COLUMNS, conform_results


def share_clean_rows(df: pd.DataFrame) -> pd.DataFrame:
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


def with_series(results: pd.DataFrame) -> pd.DataFrame:
    """Add ``series``: the method, with its protocol where that method ran under several, and
    the noise type where the study has several."""
    df = share_clean_rows(results)
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
    grouped = with_series(results).groupby(keys)
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
    conformed = conform_results(results, [])
    grid = conformed["noise_ratio"].nunique() > 1
    return accuracy_table(summarise_accuracy(conformed), grid).to_string(index=False)


def _mean_std(mean: float, std: float, n: int | None = None, digits: int = 1) -> str:
    """"mean ± std (n)"; a single seed has no std and shows the mean alone."""
    text = f"{mean:.{digits}f}"
    if math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    return f"{text} ({n})" if n is not None else text


def _percent(values: pd.Series) -> pd.Series:
    return values.map(lambda r: f"{100 * r:g}%")


def accuracy_table(summary: pd.DataFrame, grid: bool) -> pd.DataFrame:
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


def spectrum_table(spectrum: pd.DataFrame) -> pd.DataFrame:
    """SVE, LSVR and effective rank, mean ± std over seeds, per feature set and noise setting."""
    table = _grouped_mean_std(
        share_clean_rows(spectrum),
        ["features_of", "noise_type", "noise_ratio"],
        {"sve": "SVE", "lsvr": "LSVR", "effective_rank": "effective rank"},
        {"effective_rank": 1},
    )
    if "d" in spectrum:
        dims = spectrum.groupby("features_of")["d"].first()
        table["d"] = dims.reindex(table["features_of"]).to_numpy()
    return table.assign(noise_ratio=_percent(table["noise_ratio"]))


def pretrain_table(pretrain: pd.DataFrame) -> pd.DataFrame:
    """Requested vs realised noise and pre-training accuracies (%), mean ± std over seeds."""
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


def loss_table(results: pd.DataFrame) -> pd.DataFrame | None:
    """Mean NMTune term magnitudes at the last epoch per series; None when none were logged."""
    losses = [c for c in LOSS_COLUMNS if c in results and results[c].notna().any()]
    if not losses:
        return None
    rows = with_series(results).dropna(subset=losses, how="all")
    table = rows.groupby(["series", "noise_type", "noise_ratio"])[losses].mean().reset_index()
    for column in losses:
        table[column] = table[column].map(lambda v: f"{v:.3g}")
    return table.assign(noise_ratio=_percent(table["noise_ratio"]))


def fits(results: pd.DataFrame) -> pd.DataFrame:
    """One row per fitted tuner: a study evaluates one fit on its ID and all OOD test sets."""
    key = [c for c in ("noise_type", "noise_ratio", "seed", "train_set", "method", "protocol")
           if c in results]
    return results.drop_duplicates(key) if "train_set" in key else results


def timing_table(results: pd.DataFrame) -> pd.DataFrame | None:
    """Fits, mean and total fit seconds per series; None when no fit time was recorded."""
    if results["fit_seconds"].isna().all():
        return None
    grouped = with_series(fits(results)).groupby("series")["fit_seconds"]
    table = grouped.agg(["count", "mean", "sum"]).reset_index()
    table.columns = ["series", "fits", "mean seconds per fit", "total seconds"]
    return table.round({"mean seconds per fit": 2, "total seconds": 1})
