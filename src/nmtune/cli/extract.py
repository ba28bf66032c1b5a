"""``nmtune extract``: features of a dataset split through a backbone, into an ``.npz`` file."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract (cached) features of a dataset split",
        description="Run a backbone over a dataset split and write features (N×D, or V×N×D with "
        "--views V > 1 augmented views), labels and metadata to an .npz file, the input of "
        "`nmtune tune` and `nmtune analyze`. Features are cached on disk by content (backbone "
        "and weights hash, dataset, subset, views, seed), so a repeated run is a cache hit.",
    )
    p.add_argument("--backbone", required=True, metavar="NAME", help="see `nmtune backbones`")
    p.add_argument("--weights", metavar="PATH", help="state_dict to load into the backbone")
    p.add_argument(
        "--backbone-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backbone factory argument, repeatable (e.g. image_size=96, width=32)",
    )
    p.add_argument("--dataset", required=True, metavar="NAME", help="see `nmtune datasets`")
    p.add_argument("--split", required=True, metavar="SPLIT", help="e.g. train, test")
    p.add_argument("--limit", type=int, metavar="N", help="seeded stratified subset of N rows")
    p.add_argument("--seed", type=int, default=0, help="subset and augmentation seed (default 0)")
    p.add_argument("--views", type=int, default=1, metavar="V", help="augmented views (default 1)")
    p.add_argument("--clean-view", action="store_true",
                   help="with --views V > 1: view 0 un-augmented, views 1..V-1 augmented")
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="default 256")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir", metavar="DIR", help="default $NMTUNE_CACHE or ~/.cache/nmtune"
    )
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="feature file to write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_backbone_args(pairs: list[str]) -> dict:
    """``["image_size=96", "pretrained=false"]`` -> ``{"image_size": 96, "pretrained": False}``."""
    import yaml

    from .._validation import NMTuneError

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise NMTuneError(f"--backbone-arg takes KEY=VALUE, got {pair!r}")
        kwargs[key] = yaml.safe_load(value)  # YAML scalars: 96 -> int, true -> bool, abc -> str
    return kwargs


def run(args: argparse.Namespace) -> int:
    from .._validation import NMTuneError
    from ..backbones import create_backbone
    from ..data import load_dataset
    from ..features import extract

    if not args.out.endswith(".npz"):
        raise NMTuneError(f"--out must end in .npz, got {args.out}")
    if args.clean_view and args.views < 2:
        raise NMTuneError(f"--clean-view needs --views 2 or more, got --views {args.views}")
    dataset = load_dataset(args.dataset, args.split, args.limit, args.seed)
    backbone = create_backbone(
        args.backbone, weights=args.weights, **parse_backbone_args(args.backbone_arg)
    )
    result = extract(
        backbone,
        dataset,
        views=args.views,
        clean_view=args.clean_view,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=False if args.no_cache else args.cache_dir,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    result.save(args.out)
    seconds = result.meta["seconds"]["total"]
    print(
        f"cache {result.meta['cache']}: features {tuple(result.features.shape)} of "
        f"{dataset.name}/{dataset.split} through {backbone.name} in {seconds:.2f} s -> {args.out}"
    )
    return 0
