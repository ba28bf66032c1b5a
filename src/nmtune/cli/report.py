"""``nmtune report RESULTS_DIR [--out DIR]``: write the study report, print the verdicts."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write report.html and report.md for a study's results directory",
        description="Read a results directory written by `nmtune study` and write report.html "
        "(self-contained), report.md (with figures/) and claims.json; print the paths and "
        "whether each of the paper's claims is reproduced.",
    )
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="directory with results.csv")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write the report (default: RESULTS_DIR)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    paths = build_report(args.results_dir, args.out)
    for name in ("html", "markdown", "claims"):
        print(f"{name:<9} {paths[name]}")
    claims = json.loads(paths["claims"].read_text())
    width = max(len(c["verdict"]) for c in claims)
    print("claims:")
    for claim in claims:
        print(f"  {claim['verdict']:<{width}}  {claim['claim']}")
        print(f"  {'':<{width}}  {claim['evidence']}")
    return 0
