"""``python -m nmtune.pretrain`` and ``torchrun -m nmtune.pretrain``: the ``nmtune pretrain``
flags, without importing :mod:`nmtune.cli` (which sits below this package in the flow)."""

import argparse
import sys

from .._validation import NMTuneError
from .args import DESCRIPTION, add_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nmtune.pretrain", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (NMTuneError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        # The same one line and exit status as ``nmtune pretrain``.
        print(f"nmtune pretrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
