"""The ``nmtune pretrain`` flags, turned into a config and run: shared by ``nmtune pretrain``
(:mod:`nmtune.cli.pretrain`) and ``python -m nmtune.pretrain`` / ``torchrun -m nmtune.pretrain``
(DDP; rank 0 prints and writes), so the flow goes cli -> pretrain and never back.

A study config given to ``--config`` is read through :mod:`nmtune.study` (imported only then):
the one place this package looks down the flow, so that a grid point trains exactly as the
study trains it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .._validation import NMTuneError
from .config import ClipConfig, PretrainConfig

HELP = "pre-train a backbone on noisy labels (or CLIP on noisy image-text pairs)"
DESCRIPTION = (
    "Train backbone + linear head on a dataset whose training labels are corrupted once by "
    "the noise spec; checkpoint every epoch (the same command resumes); write backbone.pt "
    "(backbone state_dict without the head), metrics.json, history.csv and history.png to "
    "--out. With --objective clip, train the backbone as CLIP's image tower with a text tower "
    "on image-text pairs (--pairs, or synthetic pairs of --dataset) whose captions are "
    "swapped once (--noise caption_swap:RATE); backbone.pt is then the image tower and "
    "model.pt the whole CLIP model. Flags override the values of --config."
)
OBJECTIVES = ("supervised", "clip")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``nmtune pretrain`` flags to ``p``; ``p.set_defaults(func=run)`` is set too."""
    p.add_argument("--config", type=Path,
                   help="YAML file holding a PretrainConfig mapping (a ClipConfig one with "
                   "`objective: clip`), or a study config: the settings of its grid point "
                   "--noise/--seed, as `nmtune study` trains it (one grid point per run, e.g. "
                   "under torchrun)")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="supervised (default): cross-entropy on noisy labels; clip: "
                   "contrastive image-text pre-training (CLIP's symmetric InfoNCE)")
    p.add_argument("--pairs", metavar="CSV_OR_SHARDS",
                   help="clip: image-text pairs, an open_clip .csv/.tsv (filepath, title) or "
                   "WebDataset shards 'dir/shard-{000000..000009}.tar' (default: synthetic "
                   "pairs of --dataset with generated captions)")
    p.add_argument("--export-pairs", type=Path, metavar="DIR",
                   help="clip: write the noisy pairs the run would train on as WebDataset "
                   "shards and an open_clip CSV under DIR (for open_clip's own trainer) and "
                   "stop, without training")
    p.add_argument("--backbone", help="registered backbone name, e.g. resnet8, cnn4")
    p.add_argument("--width", type=int, help="backbone width (a backbone_kwargs entry)")
    p.add_argument("--dataset", help="registered training dataset name")
    p.add_argument("--split", help="training split (default: train)")
    p.add_argument("--limit", type=int, help="train on a seeded stratified subset of N rows")
    p.add_argument("--noise", metavar="KIND:RATE",
                   help="label noise: symmetric:0.2, pair:0.1, transition:FILE (a K×K matrix, "
                   ".npy/.csv/.json), cifar-n:NAME (the matrix estimated from a CIFAR-N label "
                   "set: aggre, random1-3, worst, noisy100) or none (default: none); with "
                   "--objective clip: caption_swap:0.2 or none")
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
    p.add_argument("--out", type=Path, help="run folder (created; resumable); required "
                   "unless --export-pairs")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint; train anew")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=run)


#: Flags copied as they are into the config (flag attribute == config field).
_PLAIN = ("backbone", "dataset", "split", "limit", "eval_dataset", "eval_split", "eval_limit",
          "epochs", "batch_size", "optimizer", "lr", "seed", "device")


def config_from_args(args: argparse.Namespace):
    """The :class:`~nmtune.pretrain.PretrainConfig` of ``--config`` overridden by the flags,
    or with ``--objective clip`` (or ``objective: clip`` in the file) the
    :class:`~nmtune.pretrain.ClipConfig`.

    A study config gives the settings of its grid point chosen by ``--noise`` and ``--seed``,
    exactly as ``nmtune study`` pre-trains that point (:func:`nmtune.study.pretrain_config`).
    """
    raw = _read_yaml(args.config) if args.config else {}
    study_pretrain = raw.get("pretrain") if _is_study(raw) else None
    objective = (args.objective or raw.pop("objective", None)
                 or (study_pretrain or {}).get("objective") or "supervised")
    raw.pop("objective", None)
    if objective not in OBJECTIVES:
        raise NMTuneError(f"objective {objective!r} is unknown; choose from {OBJECTIVES}")
    if objective == "clip":
        return _clip_config(raw, args)
    for flag in ("pairs", "export_pairs"):
        if getattr(args, flag) is not None:
            raise NMTuneError(f"--{flag.replace('_', '-')} needs --objective clip")
    noise = parse_noise(args.noise) if args.noise is not None else None
    if _is_study(raw):
        raw = _study_grid_point(raw, args.config, noise, args.seed).to_dict()
        noise = raw["noise"]
    raw.update({k: getattr(args, k) for k in _PLAIN if getattr(args, k) is not None})
    for required in ("backbone", "dataset"):
        if required not in raw:
            raise NMTuneError(f"--{required} is required (or give it in --config)")
    if args.width is not None:
        raw["backbone_kwargs"] = {**(raw.get("backbone_kwargs") or {}), "width": args.width}
    noise = dict(raw.get("noise") or {}) if noise is None else noise
    if args.noise_seed is not None:
        noise["seed"] = args.noise_seed
    noise.setdefault("seed", raw.get("seed", 0))
    raw["noise"] = noise
    return PretrainConfig.from_dict(raw)


def parse_noise(text: str) -> dict[str, Any]:
    """A ``--noise`` value as a :class:`~nmtune.noise.NoiseSpec` mapping.

    ``KIND:RATE`` (``symmetric:0.2``, ``pair:0.1``), ``none``, ``transition:FILE`` (a K×K
    row-stochastic matrix in ``.npy``, ``.csv`` or JSON/YAML), or ``cifar-n:NAME`` (the
    transition matrix estimated from that CIFAR-N label set's human annotations).
    """
    kind, _, value = text.partition(":")
    if kind == "none" and not value:
        return {"kind": "none", "rate": 0.0}
    if kind == "cifar-n":
        return {"kind": "transition", "cifar_n": value}
    if kind == "transition":
        if not value:
            raise NMTuneError("--noise transition:FILE needs the matrix file")
        return {"kind": "transition", "matrix": _read_matrix(Path(value))}
    try:
        return {"kind": kind, "rate": float(value)}
    except ValueError:
        raise NMTuneError(
            f"--noise must be KIND:RATE (e.g. symmetric:0.2), transition:FILE, cifar-n:NAME or "
            f"none, got {text!r}"
        ) from None


def _read_matrix(path: Path) -> list[list[float]]:
    from ..noise import check_transition_matrix

    try:
        if path.suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        elif path.suffix in (".csv", ".txt"):
            matrix = np.loadtxt(path, delimiter=",", ndmin=2)
        else:  # JSON is YAML
            matrix = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise NMTuneError(f"--noise transition:{path}: cannot read a matrix ({exc})") from None
    return check_transition_matrix(matrix).tolist()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise NMTuneError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise NMTuneError(f"{path} must hold a mapping of pre-training settings")
    return raw


def _is_study(raw: dict[str, Any]) -> bool:
    return "pretrain" in raw and "backbone" in raw


def _study_grid_point(study: dict[str, Any], path: Path, noise: dict | None, seed: int | None):
    """The pre-training settings of the study's grid point ``(--noise rate, --seed)``; the
    whole study config is checked first, as ``nmtune study`` checks it."""
    from ..noise import SOURCED_KINDS
    from ..study import config_from_dict, pretrain_config

    config = config_from_dict(study, source=str(path))
    ratio = 0.0
    if noise is not None and noise["kind"] != "none":
        if noise["kind"] != config.noise.kind:
            raise NMTuneError(f"--noise {noise['kind']} is not this study's noise kind "
                              f"({config.noise.kind}); give {config.noise.kind}:RATIO or none")
        ratio = 1.0 if noise["kind"] in SOURCED_KINDS else noise["rate"]
    return pretrain_config(config, ratio, 0 if seed is None else seed)


#: Flags copied as they are into a ClipConfig.
_PLAIN_CLIP = ("backbone", "dataset", "split", "limit", "pairs", "epochs", "batch_size", "lr",
               "seed", "device")
#: Supervised flags that mean nothing to a contrastive run.
_NOT_CLIP = ("eval_dataset", "eval_split", "eval_limit", "optimizer")


def _clip_config(raw: dict[str, Any], args: argparse.Namespace):
    if _is_study(raw):  # the contrastive grid point of --noise caption_swap:RATE, --seed
        noise = parse_noise(args.noise) if args.noise is not None else None
        point = _study_grid_point(raw, args.config, noise, args.seed)
        if not isinstance(point, ClipConfig):
            raise NMTuneError(f"{args.config} is a study config of supervised pre-training; "
                              "drop --objective clip")
        raw = point.to_dict()
    for flag in _NOT_CLIP:
        if getattr(args, flag) is not None:
            raise NMTuneError(f"--{flag.replace('_', '-')} does not apply to --objective clip")
    raw.update({k: getattr(args, k) for k in _PLAIN_CLIP if getattr(args, k) is not None})
    if args.width is not None:
        raw["backbone_kwargs"] = {**(raw.get("backbone_kwargs") or {}), "width": args.width}
    if args.noise is not None:
        kind, _, value = args.noise.partition(":")
        try:
            raw["caption_swap"] = {"none": 0.0, "caption_swap": float(value or "nan")}[kind]
        except (KeyError, ValueError):
            raise NMTuneError(f"--objective clip takes --noise caption_swap:RATE (e.g. "
                              f"caption_swap:0.2) or none, got {args.noise!r}") from None
    if args.noise_seed is not None:
        raw["noise_seed"] = args.noise_seed
    raw.setdefault("noise_seed", raw.get("seed", 0))
    return ClipConfig.from_dict(raw)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks for the run
    if args.export_pairs is not None:
        from .clip import export_pairs

        written = export_pairs(config, args.export_pairs)
        if rank0:
            print(json.dumps(written, sort_keys=True) if args.json else "\n".join(
                f"{k}: {v}" for k, v in written.items()))
        return 0
    if args.out is None:
        raise NMTuneError("--out is required: the run folder")
    if isinstance(config, PretrainConfig):
        from .loop import pretrain as train
    else:
        from .clip import pretrain_clip as train
    result = train(config, args.out, resume=not args.restart, progress=not args.quiet)
    if not rank0:
        return 0
    if args.json:
        print(json.dumps(result.metrics, sort_keys=True))
        return 0
    m = result.metrics
    if not isinstance(config, PretrainConfig):
        print(f"final train loss (noisy pairs)  {m['train_loss']:.4f}")
        print(f"exp(logit_scale)                {m['logit_scale']:.2f}")
        print(f"realised caption-swap rate      {m['realised_noise_rate']:.4f}")
        print(f"epochs {m['epochs']}, {m['seconds']:.1f} s")
        for label, path in (("image tower", result.backbone_path), ("clip", result.model_path),
                            ("metrics", result.metrics_path), ("captions", result.noise_path)):
            print(f"{label}: {path}")
        return 0
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
