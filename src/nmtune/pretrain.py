"""Supervised pre-training of a registered backbone on noisy labels, resumable, single process
or ``torchrun`` DDP.

``pretrain(config, out_dir)`` loads the training set, corrupts its labels once with the
config's :class:`~nmtune.noise.NoiseSpec`, trains ``backbone + linear head`` with
cross-entropy on the noisy labels, and leaves in ``out_dir``:

==================  ==========================================================================
``config.json``     the :class:`PretrainConfig`; a later call with another config is refused
``noise.npz``       ``clean``, ``noisy`` (N,) int64 and ``changed`` (N,) bool training labels
``checkpoint.pt``   last finished epoch: model, optimiser, scheduler, RNG states, history
                    (removed once the run completes)
``history.csv``     one row per epoch: lr, loss, accuracy vs noisy/clean labels, eval accuracy
``history.png``     the same curves
``backbone.pt``     state_dict of the backbone alone (no head): what
                    ``create_backbone(name, weights=...)`` loads
``metrics.json``    final accuracies, realised noise rate, seconds, epochs
==================  ==========================================================================

In-memory datasets are preprocessed once into one tensor on the device. A lazy image folder
(:class:`~nmtune.data.lazy.LazyImages`, e.g. ImageNet) is streamed instead: ``DataLoader``
workers decode and preprocess each batch of the very same rows, so both paths train alike.

Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE > 1``) each rank trains on its share of
every global batch of ``batch_size`` rows under DistributedDataParallel, so the gradient is the
single-process one; only BatchNorm statistics differ (per rank on CPU, where SyncBatchNorm is
unsupported; synchronised on CUDA). Rank 0 writes every file.

Run it as ``nmtune pretrain ...`` or ``python -m nmtune.pretrain ...`` (same arguments).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import pickle
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._io import atomic_path, write_json_atomic
from ._torch import autocast, resolve_device, seed_everything, tune_cpu_allocator
from ._validation import NMTuneError, check_int, check_keys, check_str
from .noise import NoiseSpec

__all__ = ["PretrainConfig", "PretrainResult", "pretrain"]

_OPTIMIZERS = ("sgd", "adamw")
#: Settings that say where a run executes, not what it computes: they may change on resume.
_PLACEMENT_KEYS = ("device", "num_workers")
#: Rows per forward pass when preprocessing and evaluating (memory, not results).
_EVAL_BATCH = 1024
#: The same for streamed data, where each worker holds two such decoded batches in flight
#: (256 ImageNet images: 154 MB).
_STREAM_EVAL_BATCH = 256
#: Random-resized-crop ranges of the standard ImageNet recipe (Szegedy et al. 2015, as in
#: torchvision): crop area as a fraction of the image, and crop aspect ratio (width / height).
_CROP_AREA = (0.08, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pre-training run. Defaults are the CPU-sized pilot setting.

    Parameters
    ----------
    backbone : str
        Registered backbone name (``"resnet8"``, ``"resnet20"``, ``"cnn4"``, ...).
    backbone_kwargs : dict
        Passed to ``create_backbone`` (e.g. ``{"width": 16, "in_channels": 1}``).
    dataset, split : str
        Training data, as ``load_dataset(dataset, split, limit, subset_seed)``.
    limit : int or None
        Size of a seeded, class-stratified subset; ``None`` uses the whole split.
    subset_seed : int
        Seed of that subset (kept apart from ``seed`` so that seeds vary training, not data).
    noise : NoiseSpec
        Label noise applied once to the training labels. A mapping is converted.
    eval_dataset : str or None
        Clean evaluation data; ``None`` means ``dataset``.
    eval_split : str
    eval_limit : int or None
    epochs : int
    batch_size : int
        Global batch: under DDP each of N ranks takes ``batch_size / N`` rows.
    optimizer : {"sgd", "adamw"}
        SGD with Nesterov-free momentum, or AdamW; both with per-step cosine decay to 0.
    lr : float
        Peak learning rate (AdamW wants about 1e-3).
    momentum : float
        SGD momentum (ignored by AdamW).
    weight_decay : float
    seed : int
        Model initialisation, data order and augmentation.
    augment : bool
        Random-resized crop (area 8-100%, aspect 3/4-4/3) and horizontal flip of every training
        batch, the standard ImageNet augmentation; drawn from the seeded data-order generator.
    num_workers : int
        ``DataLoader`` worker processes per rank that decode a lazy image folder; 0 decodes in
        the training process. Ignored for in-memory data; results do not depend on it.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``. Under DDP on CUDA each rank uses
        ``cuda:LOCAL_RANK``.
    """

    backbone: str = "resnet8"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    split: str = "train"
    limit: int | None = None
    subset_seed: int = 0
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    eval_dataset: str | None = None
    eval_split: str = "test"
    eval_limit: int | None = None
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    augment: bool = False
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.noise, dict):
            object.__setattr__(self, "noise", NoiseSpec.from_dict(self.noise))
        if not isinstance(self.noise, NoiseSpec):
            raise NMTuneError(f"noise must be a NoiseSpec or a mapping, got {self.noise!r}")
        if not isinstance(self.backbone_kwargs, dict):
            raise NMTuneError(f"backbone_kwargs must be a mapping, got {self.backbone_kwargs!r}")
        for name in ("backbone", "dataset", "split", "eval_split", "device"):
            check_str(getattr(self, name), name)
        if self.eval_dataset is not None:
            check_str(self.eval_dataset, "eval_dataset")
        for name in ("lr", "momentum", "weight_decay"):
            _check_number(name, getattr(self, name))
        for name in ("epochs", "batch_size"):
            check_int(getattr(self, name), name, 1)
        for name in ("limit", "eval_limit"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1)
        for name in ("seed", "subset_seed", "num_workers"):
            check_int(getattr(self, name), name, 0)
        if not isinstance(self.augment, bool):
            raise NMTuneError(f"augment must be true or false, got {self.augment!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise NMTuneError(f"unknown optimizer {self.optimizer!r}; choose from {_OPTIMIZERS}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NMTuneError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise NMTuneError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise NMTuneError(f"weight_decay must be >= 0, got {self.weight_decay}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """Build from a mapping (a YAML section, ``config.json``); unknown keys are an error."""
        if not isinstance(d, dict):
            raise NMTuneError(f"pre-training settings must be a mapping, got {d!r}")
        check_keys(d, [f.name for f in dataclasses.fields(cls)], "pre-training settings")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``PretrainConfig.from_dict(c.to_dict()) == c``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["noise"] = self.noise.to_dict()
        out["backbone_kwargs"] = dict(self.backbone_kwargs)
        return out


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NMTuneError(f"{name} must be a number, got {value!r}")


def _run_file(name: str) -> property:
    return property(lambda self: self.out_dir / name, doc=f"``out_dir / {name!r}``")


@dataclass(frozen=True)
class PretrainResult:
    """Where a finished run's files are, and its final metrics (the content of ``metrics.json``)."""

    out_dir: Path
    metrics: dict[str, Any]

    backbone_path = _run_file("backbone.pt")
    metrics_path = _run_file("metrics.json")
    history_path = _run_file("history.csv")
    plot_path = _run_file("history.png")
    noise_path = _run_file("noise.npz")
    config_path = _run_file("config.json")
    checkpoint_path = _run_file("checkpoint.pt")


# --------------------------------------------------------------------------- the run


def pretrain(
    config: PretrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> PretrainResult:
    """Pre-train ``config.backbone`` on noisy labels into ``out_dir``.

    Parameters
    ----------
    config : PretrainConfig
    out_dir : path
        Created if needed. If it holds a run of another config, :class:`NMTuneError`.
    resume : bool
        Continue from ``checkpoint.pt`` (bit-identical to an uninterrupted run on CPU with the
        same thread count), or return at once if the run already completed. ``False`` starts
        over and overwrites the run's files.
    progress : bool
        Show a tqdm bar per epoch (rank 0 only).
    on_epoch_end : callable, optional
        Called on every rank as ``on_epoch_end(epoch, row)`` after epoch ``epoch`` (1-based) is
        checkpointed; ``row`` is that epoch's line of ``history.csv``.

    Returns
    -------
    PretrainResult
    """
    result = PretrainResult(Path(out_dir), {})
    if result.out_dir.exists() and not result.out_dir.is_dir():
        raise NMTuneError(f"{result.out_dir} is a file, not a folder: give the run a folder")
    with _distributed(config.device) as ctx, _deterministic(ctx.device):
        if ctx.is_main:
            _claim_out_dir(result, config, resume)
        ctx.barrier()
        if resume and result.metrics_path.is_file() and result.backbone_path.is_file():
            return PretrainResult(result.out_dir, _read_run_json(result.metrics_path))
        if ctx.device.type == "cpu":
            tune_cpu_allocator()
        order_gen = seed_everything(config.seed)

        # -- data: the labels are corrupted exactly once; every rank reads rank 0's file.
        from .data import load_dataset

        train = load_dataset(config.dataset, config.split, config.limit, config.subset_seed)
        evalset = load_dataset(
            config.eval_dataset or config.dataset, config.eval_split, config.eval_limit, 0
        )
        if ctx.is_main:
            _write_noise(result.noise_path, train.labels, train.num_classes, config.noise, resume)
        ctx.barrier()
        labels = _read_noise(result.noise_path, train.labels)
        steps_per_epoch = _steps_per_epoch(len(train), config.batch_size, ctx.world)

        # -- model: backbone + linear head; the backbone's own preprocessing feeds it.
        backbone = _build_backbone(config)
        x_train = _rows(backbone, train.inputs, ctx.device, config.num_workers)
        x_eval = _rows(backbone, evalset.inputs, ctx.device, config.num_workers)
        y_noisy = torch.as_tensor(labels["noisy"], device=ctx.device)
        y_clean = torch.as_tensor(labels["clean"], device=ctx.device)
        y_eval = torch.as_tensor(evalset.labels, device=ctx.device)
        model = _Classifier(backbone.module, backbone.feature_dim, train.num_classes)
        model = _place(model, ctx)
        optimizer = _make_optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * steps_per_epoch
        )

        # -- resume: the checkpoint restores everything the remaining epochs depend on.
        start_epoch, history = 0, []
        if resume and result.checkpoint_path.is_file():
            start_epoch, history = _load_checkpoint(
                result.checkpoint_path, model, optimizer, scheduler, order_gen, ctx.device
            )
        trained = model
        if ctx.world > 1:
            trained = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )

        # -- train
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(len(train), generator=order_gen).to(ctx.device)
            # One crop-and-flip draw per row, after the permutation so that without
            # augmentation the generator (and so every data order) is what it always was.
            crops = (
                torch.rand(len(train), 5, generator=order_gen).to(ctx.device)
                if config.augment else None
            )
            rows = [_local_rows(perm, step, config.batch_size, ctx)
                    for step in range(steps_per_epoch)]
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"pretrain epoch {epoch + 1}/{config.epochs}",
                unit="step",
                leave=False,
                disable=not (progress and ctx.is_main),
            )
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
            trained.train()
            for step, (idx, xb) in enumerate(zip(rows, x_train.batches(rows), strict=True)):
                yb = y_noisy[idx]
                if crops is not None:
                    xb = _crop_and_flip(xb, crops[idx])
                with autocast(ctx.device):
                    logits = trained(xb)
                    loss = F.cross_entropy(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                pred = logits.detach().argmax(1)
                sums += torch.stack([
                    loss.detach().double() * len(idx),
                    (pred == yb).sum().double(),
                    (pred == y_clean[idx]).sum().double(),
                ])
                bar.update()
                if step % 20 == 0 or step == steps_per_epoch - 1:
                    n = (step + 1) * len(idx)
                    bar.set_postfix(loss=f"{sums[0].item() / n:.3f}",
                                    acc_noisy=f"{sums[1].item() / n:.3f}",
                                    acc_clean=f"{sums[2].item() / n:.3f}")
            bar.close()
            loss_sum, noisy_ok, clean_ok = ctx.sum(sums).tolist()
            seen = steps_per_epoch * config.batch_size
            row.update(train_loss=loss_sum / seen, train_acc_noisy=noisy_ok / seen,
                       train_acc_clean=clean_ok / seen)
            row["eval_acc"] = _accuracies(model, x_eval, {"eval": y_eval}, ctx)["eval"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if ctx.is_main:
                _save_checkpoint(result, model, optimizer, scheduler, order_gen, history, config)
            ctx.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)

        # -- final metrics, in eval mode over the whole training set and the eval set.
        corrupted = torch.as_tensor(labels["changed"], device=ctx.device)
        none = torch.full_like(y_noisy, -1)
        acc = _accuracies(model, x_train, {
            "train_acc_noisy": y_noisy,
            "train_acc_clean": y_clean,
            "corrupted_fit_noisy": torch.where(corrupted, y_noisy, none),
            "corrupted_fit_clean": torch.where(corrupted, y_clean, none),
        }, ctx)
        metrics = {
            **acc,
            "eval_acc": history[-1]["eval_acc"],
            "realised_noise_rate": float(labels["changed"].mean()),
            "epochs": config.epochs,
            "seconds": float(sum(r["seconds"] for r in history)),
            "num_train": len(train),
            "num_eval": len(evalset),
            "feature_dim": backbone.feature_dim,
            "world_size": ctx.world,
            "device": ctx.device.type,
        }
        if ctx.is_main:
            _write_outputs(result, model, history, metrics)
        ctx.barrier()
    return PretrainResult(result.out_dir, metrics)


# --------------------------------------------------------------------------- model


class _Classifier(nn.Module):
    """``head(backbone(x))``: the backbone's features ``(B, D)`` through a linear layer."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).reshape(len(x), -1))


def _build_backbone(config: PretrainConfig):
    """``create_backbone`` with the run's seed as the init seed, where the factory takes one."""
    from .backbones import create_backbone, get_spec

    kwargs = dict(config.backbone_kwargs)
    if "seed" in inspect.signature(get_spec(config.backbone).factory).parameters:
        kwargs.setdefault("seed", config.seed)
    return create_backbone(config.backbone, **kwargs)


def _place(model: nn.Module, ctx: _Dist) -> nn.Module:
    """Move to the device; synchronise BatchNorm across ranks where torch supports it (CUDA)."""
    if ctx.world > 1 and ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(ctx.device)


def _make_optimizer(model: nn.Module, config: PretrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _rows(backbone, inputs, device: torch.device, num_workers: int) -> _Preprocessed | _Streamed:
    """The split as model input: streamed when it is a lazy image folder, else preprocessed
    once."""
    from .data.lazy import LazyImages

    if isinstance(inputs, LazyImages):
        return _Streamed(inputs, backbone.preprocess, device, num_workers)
    return _Preprocessed(inputs, backbone.preprocess, device)


class _Preprocessed:
    """The whole split through ``preprocess`` once, kept on ``device`` as one tensor.

    The built-in sets are small (MNIST-sized), so holding them as one tensor beats a data
    loader: no workers, no per-step conversion.
    """

    eval_batch = _EVAL_BATCH

    def __init__(self, inputs: np.ndarray, preprocess: Callable, device: torch.device) -> None:
        starts = range(0, len(inputs), _EVAL_BATCH)
        self.x = torch.cat([preprocess(inputs[i : i + _EVAL_BATCH]) for i in starts]).to(device)

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, rows: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The model input of each index tensor in ``rows``, in order."""
        return (self.x[r] for r in rows)


class _Streamed:
    """A lazy split decoded and preprocessed batch by batch, by ``num_workers`` processes.

    ``preprocess`` is per image, so a batch equals the rows of the whole split preprocessed at
    once: this path trains exactly as :class:`_Preprocessed` does on the same data.
    """

    eval_batch = _STREAM_EVAL_BATCH

    def __init__(self, inputs, preprocess: Callable, device: torch.device, num_workers: int):
        if num_workers > 0:
            # The workers already decode in parallel: one thread each, not workers × threads.
            inputs = copy.copy(inputs)
            inputs.threads = 1
        self.decoder = _BatchDecoder(inputs, preprocess)
        self.device, self.num_workers = device, num_workers

    def __len__(self) -> int:
        return len(self.decoder)

    def batches(self, rows: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The model input of each index tensor in ``rows``, in order, on the device."""
        loader = torch.utils.data.DataLoader(
            self.decoder,
            batch_size=None,  # each key is already a whole batch of row indices
            sampler=[r.cpu() for r in rows],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return (xb.to(self.device, non_blocking=True) for xb in loader)


class _BatchDecoder(torch.utils.data.Dataset):
    """Map-style dataset whose keys are index tensors: one call decodes a whole batch, so a
    worker's threads decode its images in parallel."""

    def __init__(self, inputs, preprocess: Callable) -> None:
        self.inputs, self.preprocess = inputs, preprocess

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.preprocess(self.inputs[rows.numpy()])


def _crop_and_flip(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Random-resized crop and horizontal flip of a preprocessed batch, one draw per row.

    Parameters
    ----------
    x : Tensor of shape (B, C, H, W)
    u : Tensor of shape (B, 5)
        Uniforms in [0, 1): crop area (in ``_CROP_AREA``), log aspect ratio (in
        ``log _CROP_RATIO``), the crop centre's x and y, and a flip when ``u[:, 4] < 0.5``.

    Returns
    -------
    Tensor of shape (B, C, H, W)
        Each crop resampled bilinearly to ``H × W`` by one ``grid_sample``. Unlike torchvision,
        which redraws a box that does not fit (ten tries, then a centre crop), a box wider or
        taller than the image is clamped to it; and the crop is taken from the preprocessed
        image, not the original file.
    """
    h, w = x.shape[-2:]
    area = _CROP_AREA[0] + (_CROP_AREA[1] - _CROP_AREA[0]) * u[:, 0]
    lo, hi = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
    ratio = torch.exp(lo + (hi - lo) * u[:, 1])
    # The crop's width and height as fractions of the image's: area·h·w pixels, width/height
    # = ratio. affine_grid maps output to input coordinates in [-1, 1], so they are scales.
    fw = torch.sqrt(area * ratio * h / w).clamp(max=1)
    fh = torch.sqrt(area / ratio * w / h).clamp(max=1)
    cx, cy = (2 * u[:, 2] - 1) * (1 - fw), (2 * u[:, 3] - 1) * (1 - fh)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(fw)
    theta = torch.stack([torch.stack([fw * flip, zero, cx], 1), torch.stack([zero, fh, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- batches


def _steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Full batches only: a short last batch would give BatchNorm (and DDP ranks) too few rows."""
    if batch_size % world:
        raise NMTuneError(
            f"batch_size {batch_size} must be divisible by the number of processes ({world})"
        )
    if n < batch_size:
        raise NMTuneError(f"the training set has {n} rows, fewer than batch_size {batch_size}")
    return n // batch_size


def _local_rows(perm: torch.Tensor, step: int, batch_size: int, ctx: _Dist) -> torch.Tensor:
    """This rank's contiguous share of global batch ``step`` of the epoch's permutation."""
    local = batch_size // ctx.world
    start = step * batch_size + ctx.rank * local
    return perm[start : start + local]


@torch.no_grad()
def _accuracies(
    model: nn.Module,
    x: _Preprocessed | _Streamed,
    targets: dict[str, torch.Tensor],
    ctx: _Dist,
) -> dict[str, float | None]:
    """Eval-mode accuracy of ``model`` on ``x`` against each target column.

    Rows whose target is ``-1`` do not count; a column with no counted row gives ``None``.
    Each rank predicts every ``world``-th row and the counts are summed over ranks.
    """
    was_training = model.training
    model.eval()
    rows = torch.arange(ctx.rank, len(x), ctx.world, device=ctx.device)
    counts = torch.zeros(2, len(targets), dtype=torch.float64, device=ctx.device)
    chunks = list(rows.split(x.eval_batch))
    for chunk, xb in zip(chunks, x.batches(chunks), strict=True):
        with autocast(ctx.device):
            pred = model(xb).argmax(1)
        for j, target in enumerate(targets.values()):
            t = target[chunk]
            counts[0, j] += (pred == t).sum()
            counts[1, j] += (t >= 0).sum()
    model.train(was_training)
    correct, total = ctx.sum(counts).tolist()
    pairs = zip(targets, correct, total, strict=True)
    return {name: (c / n if n else None) for name, c, n in pairs}


# --------------------------------------------------------------------------- files


def _claim_out_dir(result: PretrainResult, config: PretrainConfig, resume: bool) -> None:
    """Write ``config.json``, or check it against ``config``; ``resume=False`` clears old state."""
    path = result.config_path
    want = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored
    if path.is_file():
        # A setting added after the run started is absent from its file; it ran the default.
        defaults = json.loads(json.dumps(PretrainConfig().to_dict()))
        have = {**defaults, **_read_run_json(path)}
        diff = sorted(
            k for k in set(have) | set(want)
            if k not in _PLACEMENT_KEYS and have.get(k) != want.get(k)
        )
        if diff:
            shown = "; ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff)
            raise NMTuneError(
                f"{result.out_dir} holds a pre-training run with another config ({shown}); "
                "use another output directory"
            )
    if not resume:
        for stale in (result.checkpoint_path, result.backbone_path, result.metrics_path):
            stale.unlink(missing_ok=True)
    write_json_atomic(path, want)


def _broken(path: Path, exc: BaseException | str) -> NMTuneError:
    """The error for a run file that cannot be used, on one line whatever ``exc`` says."""
    reason = " ".join(str(exc).split())[:200]
    return NMTuneError(f"{path} is not a usable file of this pre-training run ({reason}); "
                       "delete it to redo that step, or use another output directory")


def _read_run_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are both
        raise _broken(path, exc) from None
    if not isinstance(record, dict):
        raise _broken(path, f"a JSON {type(record).__name__}, not an object")
    return record


def _write_noise(path: Path, clean: np.ndarray, num_classes: int, spec: NoiseSpec, resume: bool):
    """Corrupt the labels and save them, unless a resumed run already did."""
    if resume and path.is_file():
        return
    noisy, changed = spec.apply(clean, num_classes)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, clean=clean.astype(np.int64), noisy=noisy.astype(np.int64),
                 changed=changed.astype(bool))


def _read_noise(path: Path, clean: np.ndarray) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = {k: npz[k] for k in ("clean", "noisy", "changed")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise _broken(path, exc) from None
    if any(v.shape != clean.shape for v in labels.values()):
        raise _broken(path, f"its label arrays are not {clean.shape[0]} long")
    if not np.array_equal(labels["clean"], clean):
        raise NMTuneError(
            f"{path} was made from other training labels than the dataset now loads; the data "
            "changed since the run started: use another output directory"
        )
    return labels


def _rng_state(order_gen: torch.Generator) -> dict[str, Any]:
    # Only torch RNGs drive training (init, data order); python/numpy random are not used.
    state = {"torch": torch.get_rng_state(), "order": order_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _save_checkpoint(result, model, optimizer, scheduler, order_gen, history, config) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(order_gen),
        "history": history,
        "config": config.to_dict(),
    }
    with atomic_path(result.checkpoint_path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path, model, optimizer, scheduler, order_gen, device) -> tuple[int, list]:
    """Restore a checkpoint in place; returns ``(epochs done, history)``.

    Anything that is not this run's checkpoint (random bytes, another model's) is an
    :class:`NMTuneError`, raised before training resumes from a half-restored state.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        order_gen.set_state(rng["order"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        history = list(state["history"])
    except (RuntimeError, KeyError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, pickle.UnpicklingError) as exc:
        raise _broken(path, exc) from None
    return len(history), history


def _write_outputs(result: PretrainResult, model: _Classifier, history: list, metrics: dict):
    import pandas as pd

    with atomic_path(result.history_path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    _plot_history(history, result.plot_path)
    state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    with atomic_path(result.backbone_path) as tmp:
        torch.save(state, tmp)
    # metrics.json last: its presence (with backbone.pt) marks the run complete.
    write_json_atomic(result.metrics_path, metrics)
    result.checkpoint_path.unlink(missing_ok=True)


def _plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss (noisy labels)")
    for key, label in (("train_acc_noisy", "train vs noisy labels"),
                       ("train_acc_clean", "train vs clean labels"),
                       ("eval_acc", "eval (clean)")):
        ax_acc.plot(epochs, [r[key] for r in history], marker="o", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Dist:
    """This process's place in the run: rank, world size, device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over ranks (a copy; ``t`` itself is left alone)."""
        t = t.clone()
        if self.world > 1:
            dist.all_reduce(t)
        return t


@contextlib.contextmanager
def _distributed(device: str) -> Iterator[_Dist]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``, and leave it afterwards.

    A group the caller already initialised is used and left open.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield _Dist(0, 1, resolve_device(device))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield _Dist(dist.get_rank(), dist.get_world_size(), dev)
        dist.barrier()
    finally:
        if owns_group:
            dist.destroy_process_group()


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU, where they cost nothing; the previous setting is restored."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
