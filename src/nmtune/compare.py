"""``nmtune compare RUN_A RUN_B``: do two study result folders agree within their seed spread?

**Cells.** A cell is one evaluation (noise setting, task, test set, method, protocol); its
value in each run is the mean accuracy over seeds. The seed-to-seed spread is pooled, per
series (the cell without its noise setting), over the cells of the series in both runs, so that
two or three seeds per cell still give a usable estimate. The two means differ significantly
when a two-sided t-test on that pooled spread rejects at ``alpha`` divided by the number of
cells compared (Bonferroni: a rerun passes with probability at least ``1 - alpha``). Without
any spread (one seed, or bit-identical seeds) the means must agree within ``atol`` points.

**Claims.** Each claim of :data:`nmtune.stats.CLAIMS` agrees when both runs give it the same
verdict and a Welch t-test on the two effects (from each run's per-seed spread) does not
reject at ``alpha`` divided by the number of claims, or they differ by at most ``atol``.

Exit status 0 when every cell and claim agrees and both runs hold the same cells, 1 when not,
2 on bad input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from ._io import read_csv_table
from ._validation import NMTuneError

#: Columns that identify a cell, where present; the noise columns also separate series.
CELL_KEYS = ("noise_type", "noise_ratio", "task", "kind", "train_set", "test_set", "method",
             "protocol")
NOISE_KEYS = ("noise_type", "noise_ratio")


@dataclass
class Comparison:
    """The outcome of :func:`compare_runs`.

    Attributes
    ----------
    cells : DataFrame
        One row per cell in both runs: the cell keys, ``mean_a``, ``mean_b`` (points),
        ``n_a``, ``n_b`` (seeds), ``diff`` (B - A, points), ``se`` and ``p`` of the difference,
        and ``agree``.
    claims : DataFrame
        One row per claim testable in either run: verdicts, effects (points), ``p`` of their
        difference, ``agree``.
    only_a, only_b : int
        Cells present in one run only.
    environment : dict
        ``study.json`` environment entries that differ: key -> (A, B).
    """

    cells: pd.DataFrame
    claims: pd.DataFrame
    only_a: int
    only_b: int
    environment: dict = field(default_factory=dict)
    threshold: float = math.nan

    @property
    def agree(self) -> bool:
        return (self.only_a == 0 and self.only_b == 0 and bool(self.cells["agree"].all())
                and bool(self.claims["agree"].all()))

    def to_dict(self) -> dict:
        return {"agree": self.agree, "only_a": self.only_a, "only_b": self.only_b,
                "cell_p_threshold": self.threshold,
                "cells": self.cells.to_dict(orient="records"),
                "claims": self.claims.to_dict(orient="records"),
                "environment": {k: list(v) for k, v in self.environment.items()}}

    def format(self, show_all: bool = False) -> str:
        bad = self.cells[~self.cells["agree"]]
        lines = [f"cells: {len(self.cells) - len(bad)} of {len(self.cells)} agree "
                 f"(p >= {self.threshold:.2g} or within the rounding tolerance)"]
        if self.only_a or self.only_b:
            lines.append(f"cells only in RUN_A: {self.only_a}; only in RUN_B: {self.only_b}")
        shown = self.cells if show_all else bad
        if len(shown):
            lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        lines.append("claims:")
        for row in self.claims.itertuples():
            mark = "agree" if row.agree else "DISAGREE"
            lines.append(f"  {row.claim}: A {row.verdict_a} {row.effect_a:+.2f} pts, "
                         f"B {row.verdict_b} {row.effect_b:+.2f} pts (difference p={row.p:.2g})"
                         f" -> {mark}")
        for key, (a, b) in self.environment.items():
            lines.append(f"environment differs: {key}: {a} | {b}")
        lines.append("runs agree" if self.agree else "runs DISAGREE")
        return "\n".join(lines)


def compare_runs(run_a, run_b, *, alpha: float = 0.05, atol: float = 0.05) -> Comparison:
    """Compare two results folders cell by cell and claim by claim (see the module docstring).

    Parameters
    ----------
    run_a, run_b : path
        Folders holding ``results.csv`` (and optionally ``study.json``).
    alpha : float in (0, 1)
        Family-wise level over the cells.
    atol : float >= 0
        Points within which two cell means always agree.

    Returns
    -------
    Comparison
    """
    if not 0 < alpha < 1:
        raise NMTuneError(f"--alpha must be in (0, 1), got {alpha}")
    if not atol >= 0:
        raise NMTuneError(f"--atol must be >= 0 points, got {atol}")
    a, b = _read_results(Path(run_a)), _read_results(Path(run_b))
    keys = [k for k in CELL_KEYS if k in a.columns and k in b.columns]
    cells_a, cells_b = _cell_stats(a, keys), _cell_stats(b, keys)
    both = cells_a.add_suffix("_a").join(cells_b.add_suffix("_b"), how="inner")
    if both.empty:
        raise NMTuneError(f"{run_a} and {run_b} share no cell ({', '.join(keys)})")
    threshold = alpha / len(both)
    cells = _test_cells(both.reset_index(), keys, threshold, atol)
    return Comparison(cells, _compare_claims(a, b, alpha, atol), len(cells_a) - len(both),
                      len(cells_b) - len(both), _environment_differences(run_a, run_b),
                      threshold)


def _read_results(root: Path) -> pd.DataFrame:
    path = root / "results.csv"
    if not path.is_file():
        raise NMTuneError(f"{root} has no results.csv; give a folder written by `nmtune study`")
    df = read_csv_table(path, ("seed", "kind", "method", "accuracy"))
    accuracy = pd.to_numeric(df["accuracy"], errors="coerce")
    if accuracy.isna().any() or not accuracy.between(0, 1).all():
        raise NMTuneError(f"{path}: accuracy must be fractions in [0, 1]")
    for key in CELL_KEYS:
        if key in df.columns and key != "noise_ratio":
            df[key] = df[key].fillna("").astype(str)
    if "noise_ratio" not in df.columns:
        df["noise_ratio"] = 0.0
    if "noise_type" not in df.columns:
        df["noise_type"] = "none"
    return df.assign(accuracy=accuracy)


def _cell_stats(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    pts = df.assign(pts=100 * df["accuracy"]).groupby(keys)["pts"]
    return pd.DataFrame({"mean": pts.mean(), "var": pts.var(ddof=1).fillna(0.0),
                         "n": pts.size()})


def _test_cells(both: pd.DataFrame, keys: list[str], threshold: float, atol: float
                ) -> pd.DataFrame:
    """Pool the spread per series, then test each cell's difference of means."""
    series = [k for k in keys if k not in NOISE_KEYS]  # never empty: "method" is required
    ss = (both["n_a"] - 1) * both["var_a"] + (both["n_b"] - 1) * both["var_b"]
    grouped = both.assign(ss=ss, dof=both["n_a"] + both["n_b"] - 2).groupby(series)
    pooled_ss, pooled_dof = grouped["ss"].transform("sum"), grouped["dof"].transform("sum")
    pooled_var = (pooled_ss / pooled_dof.where(pooled_dof > 0)).fillna(0.0)
    diff = both["mean_b"] - both["mean_a"]
    se = np.sqrt(pooled_var * (1 / both["n_a"] + 1 / both["n_b"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(diff) / se
    p = np.where(se > 0, 2 * sps.t.sf(t, pooled_dof.clip(lower=1)), np.where(diff == 0, 1, 0))
    agree = (np.abs(diff) <= atol) | (p >= threshold)
    return both[keys].assign(mean_a=both["mean_a"], mean_b=both["mean_b"], n_a=both["n_a"],
                             n_b=both["n_b"], diff=diff, se=se, p=p, agree=agree)


def _compare_claims(a: pd.DataFrame, b: pd.DataFrame, alpha: float, atol: float
                    ) -> pd.DataFrame:
    """Same verdict, and effects not significantly apart (Welch, Bonferroni over claims)."""
    from .stats import claim_effects

    effects_a, effects_b = claim_effects(a), claim_effects(b)
    names = list(dict.fromkeys([*effects_a, *effects_b]))
    rows = []
    for claim in names:
        ea, eb = effects_a.get(claim), effects_b.get(claim)
        p = _welch_p(ea, eb) if ea is not None and eb is not None else 0.0
        same = ea is not None and eb is not None and ea.verdict == eb.verdict
        diff = _mean(eb) - _mean(ea)
        rows.append({"claim": claim, "verdict_a": _verdict(ea), "verdict_b": _verdict(eb),
                     "effect_a": _mean(ea), "effect_b": _mean(eb), "p": p,
                     "agree": same and (abs(diff) <= atol or p >= alpha / len(names))})
    return pd.DataFrame(rows, columns=["claim", "verdict_a", "verdict_b", "effect_a",
                                       "effect_b", "p", "agree"])


def _welch_p(ea, eb) -> float:
    """Two-sided p of the difference of two claims' effects, from their per-seed spreads."""
    va, vb = ea.sd**2 / ea.n_seeds, eb.sd**2 / eb.n_seeds
    if not va + vb > 0:  # one seed (NaN) or no spread: only an exact match agrees
        return float(ea.mean == eb.mean)
    dof = (va + vb) ** 2 / (va**2 / max(ea.n_seeds - 1, 1) + vb**2 / max(eb.n_seeds - 1, 1))
    return float(2 * sps.t.sf(abs(eb.mean - ea.mean) / math.sqrt(va + vb), dof))


def _verdict(effect) -> str:
    return effect.verdict if effect is not None else "not testable"


def _mean(effect) -> float:
    return effect.mean if effect is not None else math.nan


def _environment_differences(run_a, run_b) -> dict:
    """Leaves of the two ``study.json`` environment records that differ (empty if absent)."""
    envs = [_flatten(_study_environment(Path(r))) for r in (run_a, run_b)]
    if not all(envs):  # one record absent: nothing to compare it with, key by key
        return {}
    return {k: (envs[0].get(k), envs[1].get(k)) for k in sorted(set(envs[0]) | set(envs[1]))
            if envs[0].get(k) != envs[1].get(k)}


def _study_environment(root: Path) -> dict:
    path = root / "study.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("environment") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise NMTuneError(f"{path} is not valid JSON: {exc}") from None


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items()
                for k, v in _flatten(value, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj)
                for k, v in _flatten(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}
