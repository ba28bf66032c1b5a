"""Study report: the paper's claims checked against a results directory, with tables and figures.

:func:`build_report` reads what :mod:`nmtune.study` writes (``results.csv``, ``spectrum.csv``,
``pretrain.csv``, ``study.json``; schema and loading in :mod:`nmtune.results`) and writes
``report.html`` (self-contained: figures embedded as base64 PNG, inline CSS), ``report.md``
(figures as PNG files in ``figures/``) and ``claims.json``. :func:`check_claims` states, for
each claim of Chen et al. (ICLR 2024) its paired effect with a 95% interval and whether the
measured numbers reproduce it, contradict it, rule out an effect of the stated size or cannot
resolve it (the rules in its docstring; the statistics live in :mod:`nmtune.stats`).

Accuracies are fractions in [0, 1] on disk and percentage points ("pts") in the report. A
missing optional file or column degrades the report (a figure, table or claim is left out and a
note says why) instead of failing it.

The package: :mod:`.claims` (claim statistics and verdicts), :mod:`.tables` (summaries and
tables), :mod:`.figures` (matplotlib figures), :mod:`.document` (blocks and their HTML and
Markdown renderings) and :mod:`.build` (assembles and writes the report). This module only
re-exports their public names.
"""

from ..results import StudyResults, load_results
from .build import build_report
from .claims import DECISION_RULES, VERDICTS, Claim, check_claims
from .tables import summarise_accuracy, summary_table

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
