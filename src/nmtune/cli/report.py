"""``nmtune report RESULTS_DIR [--out DIR] [--effect-size PTS]``: write the study report, print
the verdicts."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write report.html and report.md for a study's results directory",
        description="Read a results directory written by `nmtune study` and write report.html "
        "(self-contained), report.md (with figures/) and claims.json; print the paths and "
        "each of the paper's claims with its effect, 95% interval and verdict.",
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="directory with results.csv")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write the report (default: RESULTS_DIR)")
    parser.add_argument("--effect-size", metavar="PTS", type=float, default=1.0,
                        help="smallest effect of interest in accuracy points: the margin of "
                        "'no effect as large as PTS' and the effect the seeds-needed figure "
                        "plans for (default: 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    paths = build_report(args.results_dir, args.out, effect_size=args.effect_size)
    for name in ("html", "markdown", "claims"):
        print(f"{name:<9} {paths[name]}")
    claims = json.loads(paths["claims"].read_text())
    print("claims:")
    for claim in claims:
        print(f"  {claim['claim']}: {claim['verdict_text']}")
        print(f"      {claim['evidence']}")
    return 0
