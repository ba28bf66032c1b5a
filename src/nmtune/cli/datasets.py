"""``nmtune datasets [NAME] [--json]``: the dataset registry, its cards and the domain shifts."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "datasets",
        help="list datasets and domain shifts, or show one dataset's card",
        description="Without NAME, list the registered datasets (splits, classes, shape, "
        "whether installed) and the domain shifts that derive OOD sets as BASE~SHIFT "
        "(e.g. mnist~rotate30, digits~framed). With NAME (any name a study accepts, "
        "folder:PATH, csv:PATH and jsonl:PATH included), show its card.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a dataset name to describe")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import dataset_card, list_datasets, list_shifts

    if args.name:
        card = dataset_card(args.name).to_dict()
        print(json.dumps(card, indent=2) if args.json else _format_card(card))
        return 0
    cards = [dataset_card(name).to_dict() for name in list_datasets()]
    if args.json:
        print(json.dumps({"datasets": cards, "shifts": list_shifts()}, indent=2))
    else:
        print(_format_listing(cards, list_shifts()))
    return 0


def _format_listing(cards: list[dict], shifts: dict[str, str]) -> str:
    rows = [("NAME", "MODALITY", "CLASSES", "SPLITS", "INPUT", "INSTALLED")]
    rows += [
        (
            c["name"],
            c["modality"],
            str(c["num_classes"]),
            " ".join(f"{s}={n}" for s, n in c["splits"].items()),
            _shape(c["input_shape"]),
            "yes" if c["available"] else f"no: {c['requires']}",
        )
        for c in cards
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[-1]
        for r in rows
    ]
    lines += ["", "Shifts (image datasets; NAME~SHIFT, chainable, seeded by the load seed):"]
    width = max(map(len, shifts))
    lines += [f"  {usage.ljust(width)}  {text}" for usage, text in shifts.items()]
    lines += [
        "",
        "Also: folder:PATH (ImageFolder tree), csv:PATH / jsonl:PATH (text, label[, split]).",
    ]
    return "\n".join(lines)


def _format_card(c: dict) -> str:
    fields = [
        ("name", c["name"]),
        ("description", c["description"]),
        ("modality", c["modality"]),
        ("classes", f"{c['num_classes']}: {', '.join(c['classes'])}"),
        ("splits", ", ".join(f"{s} {n}" for s, n in c["splits"].items())),
        ("input shape", _shape(c["input_shape"])),
        ("source", c["source"]),
        ("licence", c["licence"]),
        ("installed", "yes" if c["available"] else f"no: {c['requires']}"),
    ]
    return "\n".join(f"{key:<12} {value}" for key, value in fields)


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if shape else "text"
