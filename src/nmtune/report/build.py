"""Assemble the study report from the claims, tables and figures, and write its files."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from scipy import stats as sps

from .._io import make_folder, write_bytes_atomic, write_json_atomic
from ..results import StudyResults, load_results
from .claims import ALPHA, DEFAULT_EFFECT_SIZE, POWER, Claim, check_claims, decision_rules
from .document import Bullets, Heading, Image, Paragraph, Table, render_html, render_markdown
from .figures import (
    N_SPECTRUM,
    plot_accuracy_vs_noise,
    plot_method_bars,
    plot_spectra,
    plot_spectrum_metrics,
    png,
)
from .tables import (
    accuracy_table,
    fits,
    loss_table,
    pretrain_table,
    spectrum_table,
    summarise_accuracy,
    timing_table,
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
        recorded = fits(results)["fit_seconds"].sum()
        if study.pretrain is not None:
            recorded += study.pretrain["seconds"].sum()
        facts.append(_fact("recorded_fit_and_pretraining_seconds", float(recorded)))
    blocks = [Heading(f"nmtune study report: {name}", 1), Bullets(facts)]
    config = meta.get("config")
    if isinstance(config, dict) and config:
        blocks += [Heading("Configuration", 3),
                   Bullets([f"{k}: {_compact(v)}" for k, v in config.items()])]
    if study.notes:
        blocks += [Heading("Notes on the data", 3), Bullets(study.notes)]
    return blocks


def _claims_blocks(claims: list[Claim], effect_size: float, n_seeds: int) -> list:
    table = pd.DataFrame({
        "claim": [c.claim for c in claims],
        "verdict": [c.verdict_text for c in claims],
        "effect, 95% interval": [c.effect or "—" for c in claims],
        "MDE (pts)": [f"{c.mde:.2f}" if math.isfinite(c.mde) else "—" for c in claims],
        "evidence": [c.evidence for c in claims],
    })
    return [Heading("The paper's claims"), Table(table),
            Heading("What this study can and cannot resolve", 3),
            Paragraph(_resolution(claims, effect_size, n_seeds)),
            Paragraph("How the verdicts are decided. " + decision_rules(effect_size))]


def _seeds_needed(claim: Claim) -> int | None:
    """Seeds that would detect the effect size on every one of the claim's effects."""
    needed = [v for k, v in claim.statistics.items() if k.endswith("seeds_needed")]
    return None if not needed or None in needed else max(needed)


def _resolution(claims: list[Claim], effect_size: float, n_seeds: int) -> str:
    """The study's minimum detectable effects, and what it can and cannot resolve, in words."""
    measured = [c for c in claims if math.isfinite(c.mde)]
    if not measured:
        return ("No accuracy claim has the 2 seeds or more that an interval and a minimum "
                "detectable effect (MDE) need: this study resolves no effect size.")
    x = f"{effect_size:g}"
    text = [f"With {n_seeds} seeds, the minimum detectable effect (MDE: the effect a two-sided "
            f"{ALPHA:.0%} t-test on per-seed effects detects with {POWER:.0%} power at the "
            "spread measured here) is "
            + "; ".join(f"{c.mde:.2f} pts for '{c.claim}'" for c in measured) + "."]
    resolved = [c.claim for c in measured if c.mde <= effect_size]
    unresolved = [c for c in measured if c.mde > effect_size]
    if resolved:
        text.append(f"It can resolve an effect of {x} pts on: " + "; ".join(resolved) + ".")
    if unresolved:
        plans = [f"'{c.claim}' would need {n} seeds" if (n := _seeds_needed(c)) is not None
                 else f"'{c.claim}' (no spread to plan from)" for c in unresolved]
        text.append(f"It cannot resolve an effect of {x} pts on {len(unresolved)} of the "
                    f"{len(measured)} accuracy claims: an 'underpowered' verdict there means "
                    f"not measured, not absent. At {POWER:.0%} power, " + "; ".join(plans) + ".")
    if n_seeds <= 3:
        critical = sps.t.ppf(1 - ALPHA / 2, max(n_seeds - 1, 1))
        text.append(f"With {n_seeds} seeds the t-interval has {n_seeds - 1} degree(s) of "
                    f"freedom (critical value {critical:.1f}), and the spread behind the MDE and "
                    "the seeds needed is itself estimated from those seeds: read them as a "
                    "rough guide.")
    if unresolved:
        text.append("The packaged study `nmtune study resolve` is sized for an MDE of at most "
                    "1 point on claims (1) and (2) (docs/results.md).")
    return " ".join(text)


def _figure_blocks(study: StudyResults, summary: pd.DataFrame) -> list:
    figures = []
    if study.has_noise_grid:
        figures += [
            ("id_accuracy", plot_accuracy_vs_noise(summary, "id"),
             "ID accuracy vs pre-training noise ratio (mean ± std over seeds)."),
            ("ood_accuracy", plot_accuracy_vs_noise(summary, "ood"),
             "OOD accuracy vs noise ratio; dashed: chance; dotted: the ID counterpart."),
        ]
    else:
        figures.append(("method_comparison", plot_method_bars(summary),
                        "Accuracy per task and method (mean ± std over seeds)."))
    spectrum = study.spectrum
    if spectrum is not None and spectrum["noise_ratio"].nunique() > 1:
        figures.append(("spectrum_metrics", plot_spectrum_metrics(spectrum),
                        "SVE and LSVR of the features vs noise ratio (mean ± std over seeds)."))
    if spectrum is not None:
        figures.append(("singular_values", plot_spectra(spectrum),
                        f"Normalised singular values σ_i/Σσ (first {N_SPECTRUM}, seed mean)."))
    return [Image(name, png(fig), caption) for name, fig, caption in figures if fig is not None]


def _table_blocks(study: StudyResults, summary: pd.DataFrame) -> list:
    sections = [("Accuracy (%), mean ± std (n seeds)",
                 accuracy_table(summary, study.has_noise_grid))]
    if study.pretrain is not None:
        sections.append(("Pre-training (requested vs realised noise)",
                         pretrain_table(study.pretrain)))
    if study.spectrum is not None:
        sections.append(("Feature spectrum, mean ± std over seeds",
                         spectrum_table(study.spectrum)))
    sections.append(("NMTune term magnitudes (final epoch, mean)", loss_table(study.results)))
    sections.append(("Tuning time", timing_table(study.results)))
    blocks = []
    for title, table in sections:
        if table is not None:
            blocks += [Heading(title, 3), Table(table)]
    return blocks


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json_safe(record: dict) -> dict:
    """NaN statistics become null: strict JSON has no NaN."""
    record["statistics"] = {k: _finite_or_none(v) for k, v in record["statistics"].items()}
    record["mde"] = _finite_or_none(record["mde"])
    return record


def build_report(
    results_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    effect_size: float = DEFAULT_EFFECT_SIZE,
) -> dict[str, Path]:
    """Write the study report for a results directory.

    Parameters
    ----------
    results_dir : path
        Directory written by :mod:`nmtune.study` (see :func:`load_results`).
    out_dir : path, optional
        Where to write; defaults to ``results_dir``.
    effect_size : float > 0
        The smallest effect of interest in accuracy points (default 1): the equivalence
        margin of the "no effect" verdict and the effect the seeds-needed figures plan for.

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
    claims = check_claims(study.results, study.spectrum, effect_size=effect_size)
    make_folder(out, "the report")
    summary = summarise_accuracy(study.results)
    blocks = [
        *_header(study, name),
        *_claims_blocks(claims, effect_size, study.results["seed"].nunique()),
        Heading("Figures"),
        *_figure_blocks(study, summary),
        Heading("Tables"),
        *_table_blocks(study, summary),
    ]
    paths = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "figures": out / "figures",
        "claims": out / "claims.json",
    }
    for block in blocks:
        if isinstance(block, Image):
            write_bytes_atomic(paths["figures"] / f"{block.name}.png", block.png)
    write_bytes_atomic(paths["markdown"], render_markdown(blocks, "figures").encode())
    write_bytes_atomic(paths["html"], render_html(blocks, f"nmtune report: {name}").encode())
    write_json_atomic(paths["claims"], [_json_safe(asdict(c)) for c in claims])
    return paths
