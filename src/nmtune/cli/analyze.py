"""``nmtune analyze FEATURES.npz``: singular-value spectrum metrics of a feature file."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="spectrum metrics (SVE, LSVR, effective rank) of a feature file",
        description="Print the singular value entropy (SVE), largest singular value ratio "
        "(LSVR), effective rank, N, D and the top singular values of the features in an .npz "
        "file (keys 'features' and 'labels'). Rows are L2-normalised and features centred "
        "first unless switched off. Of V×N×D multi-view features, view 0 is analysed.",
    )
    p.add_argument("features", metavar="FEATURES.npz", help="feature file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-normalize", action="store_true", help="skip L2 row normalisation")
    p.add_argument("--no-center", action="store_true", help="skip per-feature centring")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="how many leading singular values to print (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._io import load_feature_file
    from .._validation import NMTuneError, as_float_array
    from ..spectrum import summary

    if args.top < 0:
        raise NMTuneError(f"--top must be >= 0, got {args.top}")
    features = as_float_array(
        load_feature_file(args.features)[0], f"{args.features}: features", ndim=(2, 3)
    )
    views = features.shape[0] if features.ndim == 3 else 1
    if features.ndim == 3:
        print(f"note: {args.features} holds {views} views; analysing view 0", file=sys.stderr)
        features = features[0]
    result = summary(features, normalize=not args.no_normalize, center=not args.no_center)
    top = [float(v) for v in result.pop("singular_values")[: args.top]]
    result.update(view=0, views=views, top_singular_values=top, path=str(args.features))
    if args.json:
        print(json.dumps(result))
    else:
        print(_format(result))
    return 0


def _format(r: dict) -> str:
    view = f", view 0 of {r['views']}" if r["views"] > 1 else ""
    lines = [
        f"{r['path']}: N={r['n']}, D={r['d']}{view}"
        f" (normalize={r['normalize']}, center={r['center']})",
        f"SVE             {r['sve']:.4f}",
        f"LSVR            {r['lsvr']:.4f}",
        f"effective rank  {r['effective_rank']:.2f}",
    ]
    if r["top_singular_values"]:
        values = " ".join(f"{v:.4g}" for v in r["top_singular_values"])
        lines.append(f"top {len(r['top_singular_values'])} singular values: {values}")
    return "\n".join(lines)
