"""``nmtune pretrain``: pre-train a built-in backbone on noisy labels (resumable, torchrun-ready).

Works the same as ``python -m nmtune.pretrain`` and under
``torchrun --nproc_per_node=N -m nmtune.pretrain ...`` (DDP; rank 0 prints and writes).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import yaml

from .._validation import NMTuneError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pre-train a backbone on noisy labels",
        description="Train backbone + linear head on a dataset whose training labels are "
        "corrupted once by the noise spec; checkpoint every epoch (the same command resumes); "
        "write backbone.pt (backbone state_dict without the head), metrics.json, history.csv "
        "and history.png to --out. Flags override the values of --config.",
    )
    p.add_argument("--config", type=Path,
                   help="YAML file holding a PretrainConfig mapping, or a study config (its "
                   "pretrain section and backbone: one grid point per run, e.g. under torchrun)")
    p.add_argument("--backbone", help="registered backbone name, e.g. resnet8, cnn4")
    p.add_argument("--width", type=int, help="backbone width (a backbone_kwargs entry)")
    p.add_argument("--dataset", help="registered training dataset name")
    p.add_argument("--split", help="training split (default: train)")
    p.add_argument("--limit", type=int, help="train on a seeded stratified subset of N rows")
    p.add_argument("--noise", metavar="KIND:RATE",
                   help="label noise, e.g. symmetric:0.2, pair:0.1 or none (default: none)")
    p.add_argument("--noise-seed", type=int, help="seed of the noise (default: --seed)")
    p.add_argument("--eval-dataset", help="clean evaluation dataset (default: --dataset)")
    p.add_argument("--eval-split", help="evaluation split (default: test)")
    p.add_argument("--eval-limit", type=int, help="evaluate on a subset of N rows")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split over DDP ranks)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"))
    p.add_argument("--lr", type=float, help="peak learning rate (cosine decay per step)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--out", type=Path, required=True, help="run folder (created; resumable)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint; train anew")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=run)


#: Flags copied as they are into the config (flag attribute == config field).
_PLAIN = ("backbone", "dataset", "split", "limit", "eval_dataset", "eval_split", "eval_limit",
          "epochs", "batch_size", "optimizer", "lr", "seed", "device")


def config_from_args(args: argparse.Namespace):
    """The :class:`~nmtune.pretrain.PretrainConfig` of ``--config`` overridden by the flags."""
    from ..pretrain import PretrainConfig

    raw = _read_yaml(args.config) if args.config else {}
    raw.update({k: getattr(args, k) for k in _PLAIN if getattr(args, k) is not None})
    for required in ("backbone", "dataset"):
        if required not in raw:
            raise NMTuneError(f"--{required} is required (or give it in --config)")
    if args.width is not None:
        raw["backbone_kwargs"] = {**(raw.get("backbone_kwargs") or {}), "width": args.width}
    noise = dict(raw.get("noise") or {})
    if args.noise is not None:
        noise = parse_noise(args.noise)
    if args.noise_seed is not None:
        noise["seed"] = args.noise_seed
    noise.setdefault("seed", raw.get("seed", 0))
    raw["noise"] = noise
    return PretrainConfig.from_dict(raw)


def parse_noise(text: str) -> dict[str, Any]:
    """``"symmetric:0.2"`` -> ``{"kind": "symmetric", "rate": 0.2}``; ``"none"`` -> no noise."""
    kind, _, rate = text.partition(":")
    if kind == "none" and not rate:
        return {"kind": "none", "rate": 0.0}
    try:
        return {"kind": kind, "rate": float(rate)}
    except ValueError:
        raise NMTuneError(
            f"--noise must be KIND:RATE (e.g. symmetric:0.2) or none, got {text!r}"
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise NMTuneError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise NMTuneError(f"{path} must hold a mapping of pre-training settings")
    if "pretrain" in raw and "backbone" in raw:
        return _study_pretrain_settings(raw, path)
    return raw


def _study_pretrain_settings(study: dict[str, Any], path: Path) -> dict[str, Any]:
    """A study config's ``pretrain`` section with its backbone: the settings ``nmtune study``
    pre-trains each grid point with, less the noise and seed that ``--noise``/``--seed`` give."""
    if not isinstance(study["pretrain"], dict):
        raise NMTuneError(f"{path}: the study has no pretrain section to run")
    backbone = study["backbone"]
    if isinstance(backbone, str):
        backbone = {"name": backbone}
    return {**study["pretrain"], "backbone": backbone["name"],
            "backbone_kwargs": dict(backbone.get("kwargs") or {})}


def run(args: argparse.Namespace) -> int:
    from ..pretrain import pretrain

    config = config_from_args(args)
    result = pretrain(config, args.out, resume=not args.restart, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for the run
    if args.json:
        print(json.dumps(result.metrics, sort_keys=True))
        return 0
    m = result.metrics
    print(f"train accuracy vs noisy labels  {m['train_acc_noisy']:.4f}")
    print(f"train accuracy vs clean labels  {m['train_acc_clean']:.4f}")
    print(f"eval accuracy (clean)           {m['eval_acc']:.4f}")
    print(f"realised noise rate             {m['realised_noise_rate']:.4f}")
    print(f"epochs {m['epochs']}, {m['seconds']:.1f} s training")
    for label, path in (("backbone", result.backbone_path), ("metrics", result.metrics_path),
                        ("history", result.history_path), ("curves", result.plot_path),
                        ("labels", result.noise_path)):
        print(f"{label}: {path}")
    return 0
