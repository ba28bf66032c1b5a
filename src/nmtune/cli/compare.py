"""``nmtune compare RUN_A RUN_B``: the verb over :func:`nmtune.compare.compare_runs`."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="say whether two study result folders agree within their seed spread",
        description="Compare two folders written by `nmtune study`, cell by cell (mean over "
        "seeds against the pooled seed-to-seed spread, Bonferroni over cells) and claim by "
        "claim (same verdict, effects not significantly apart). Exit 0 when they agree, 1 when "
        "not, 2 on bad input.",
    )
    p.add_argument("run_a", metavar="RUN_A", help="results folder (holds results.csv)")
    p.add_argument("run_b", metavar="RUN_B", help="results folder to compare against RUN_A")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise level of the cell tests (default: %(default)s)")
    p.add_argument("--atol", type=float, default=0.05, metavar="PTS",
                   help="differences up to this many points always agree (rounding; "
                   "default: %(default)s)")
    p.add_argument("--all", action="store_true", help="list every cell, not only disagreements")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import compare_runs

    result = compare_runs(args.run_a, args.run_b, alpha=args.alpha, atol=args.atol)
    if args.json:
        print(json.dumps(result.to_dict(), default=float))
    else:
        print(result.format(show_all=args.all))
    return 0 if result.agree else 1


