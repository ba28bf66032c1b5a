"""``nmtune pretrain``: pre-train a built-in backbone on noisy labels (resumable, torchrun-ready).

The flags, their config and the run live in :mod:`nmtune.pretrain.args`, which
``python -m nmtune.pretrain`` uses too; this module only registers the verb.
"""

from __future__ import annotations

from ..pretrain.args import DESCRIPTION, HELP, add_arguments, config_from_args, parse_noise

__all__ = ["config_from_args", "parse_noise", "register"]


def register(subparsers) -> None:
    add_arguments(subparsers.add_parser("pretrain", help=HELP, description=DESCRIPTION))
