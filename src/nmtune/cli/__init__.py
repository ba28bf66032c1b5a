"""``nmtune <verb>``: one module per verb under ``nmtune.cli``, each with ``register(subparsers)``.

A verb's ``register`` adds its parser and sets ``func`` (``args -> exit code``). Errors that
users cause (``NMTuneError``, missing files) print one line to stderr and exit 2; anything else
is a bug and keeps its traceback.

Every verb module is imported to build the parser, so at module level it imports only the
standard library and light parts of nmtune; torch, scipy, pandas, matplotlib and scikit-learn
are imported inside its ``func``. ``nmtune --help``, ``nmtune datasets`` and ``nmtune
backbones`` then cost about 0.15 s of CPU, not 1.3-3 s (``docs/benchmarks.md``; held by
``tests/test_cli_startup.py``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from .._validation import NMTuneError

#: Verb modules, in the order ``--help`` lists them.
COMMANDS = (
    "datasets", "backbones", "extract", "analyze", "tune", "report", "pretrain",
    "study", "serve_embeddings", "compare", "estimate_noise",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmtune",
        description="Noisy Model Learning: inject label noise, pre-train, extract features, "
        "diagnose the spectrum, tune (LP, MLP, NMTune), evaluate ID and OOD, report.",
    )
    parser.add_argument("--version", action="version", version=f"nmtune {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (NMTuneError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"nmtune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nmtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
