"""``nmtune study [CONFIG] [--out DIR] [--executor ray [--address ADDR]] [--plan]``: run or resume
a study, then write its report; or print its cost plan."""

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
    p.add_argument("--executor", choices=("in-process", "ray"), default="in-process",
                   help="run cells one after another here (default), or as Ray tasks "
                   "(needs nmtune[ray]; --out on a path every node shares)")
    p.add_argument("--address", default=None,
                   help="with --executor ray: the cluster to join (e.g. auto, or HEAD:6379); "
                   "default: a local Ray")
    p.add_argument("--plan", action="store_true",
                   help="print the cells, their dependencies and each stage's estimated cost "
                   "(FLOPs, memory, CPU and GPU time), then stop: runs and writes nothing")
    p.add_argument("--gpu", default=None,
                   help="with --plan: the GPU to estimate time on (default: H100)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._validation import NMTuneError
    from ..report import build_report, summary_table
    from ..study import load_config, run_study

    if args.gpu is not None and not args.plan:  # it would be ignored while the study runs
        raise NMTuneError("--gpu needs --plan")
    config = load_config(args.config)
    if args.plan:
        from ..plan import format_plan, plan_study

        print(format_plan(plan_study(config, **({"gpu": args.gpu} if args.gpu else {}))))
        return 0
    out = args.out or Path("nmtune-results") / config.name
    tables = run_study(config, out, progress=not args.quiet, executor=args.executor,
                       address=args.address)
    print(summary_table(tables["results"]))
    print(f"\nresults: {out / 'results.csv'}")
    if not args.no_report:
        for kind, path in build_report(out).items():
            print(f"{kind}: {path}")
    return 0
