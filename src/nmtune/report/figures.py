"""The report's matplotlib figures: accuracy vs noise, method bars, spectrum metrics, spectra.

Figures are drawn on the object-oriented API (``Figure`` + Agg canvas, no pyplot state), so
drawing is thread-safe and leaves no global figure behind.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..results import parse_singular_values
from .tables import share_clean_rows

#: Leading singular values drawn in the spectrum figure.
N_SPECTRUM = 64


def _panels(n: int, width: float = 4.3, height: float = 3.3) -> tuple[Figure, list]:
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (100 dpi)."""
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


def plot_accuracy_vs_noise(summary: pd.DataFrame, kind: str) -> Figure | None:
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


def plot_spectrum_metrics(spectrum: pd.DataFrame) -> Figure:
    """SVE and LSVR vs noise ratio, one line per feature set and noise type, mean ± std."""
    df = share_clean_rows(spectrum)
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


def plot_spectra(spectrum: pd.DataFrame) -> Figure | None:
    """Panels per feature set: normalised singular values (log scale), one curve per setting."""
    cells = enumerate(spectrum["singular_values"])
    values = [parse_singular_values(text, row) for row, text in cells]
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


def plot_method_bars(summary: pd.DataFrame) -> Figure:
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
