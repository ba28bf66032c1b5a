"""``nmtune study [CONFIG] [--out DIR]``: run or resume a study, then write its report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study",
        help="run (or resume) a study grid and write its report",
        description="Run the experiment grid of a YAML config: pre-train over noise ratios and "
        "seeds, extract features, measure the spectrum, tune LP/MLP/NMTune, evaluate ID and "
        "OOD, and write results.csv, report.html and report.md. Killed at any point, the same "
        "command resumes where it stopped.",
    )
    p.add_argument("config", nargs="?", default="default",
                   help="a YAML file, or a packaged config name (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default: nmtune-results/<study name>)")
    p.add_argument("--no-report", action="store_true", help="skip writing the report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report, summary_table
    from ..study import load_config, run_study

    config = load_config(args.config)
    out = args.out or Path("nmtune-results") / config.name
    tables = run_study(config, out, progress=not args.quiet)
    print(summary_table(tables["results"]))
    print(f"\nresults: {out / 'results.csv'}")
    if not args.no_report:
        for kind, path in build_report(out).items():
            print(f"{kind}: {path}")
    return 0
