"""``nmtune backbones``: the registered backbones, their feature width and what they need."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "backbones",
        help="list the registered backbones",
        description="List every registered backbone and backbone family (NAME after the colon): "
        "feature dimension with default arguments (when known without loading), modality, "
        "whether its dependencies are installed and the command that installs them.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backbones import list_backbones

    rows = [
        {
            "name": spec.name + ("NAME" if spec.is_family else ""),
            "feature_dim": spec.feature_dim,
            "modality": spec.modality,
            "installed": spec.installed,
            "install": spec.install,
            "description": spec.description,
        }
        for spec in list_backbones()
    ]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


def _table(rows: list[dict]) -> str:
    header = ("name", "dim", "modality", "installed", "description / install")
    lines = [
        (
            r["name"],
            "-" if r["feature_dim"] is None else str(r["feature_dim"]),
            r["modality"],
            "yes" if r["installed"] else "no",
            r["description"] if r["installed"] else f"needs: {r['install']}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *lines]
    )
