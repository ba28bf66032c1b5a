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

The loop reads top to bottom in :func:`pretrain`; the input pipelines, run files and process
helpers it calls live beside it (``inputs``, ``runfiles``, ``distributed``).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._torch import autocast, seed_everything, tune_cpu_allocator
from ..augment import crop_and_flip
from .config import PretrainConfig, PretrainResult
from .distributed import Dist, deterministic, distributed, local_rows, steps_per_epoch
from .inputs import Preprocessed, Streamed, model_input
from .runfiles import (
    load_checkpoint,
    read_noise,
    run_folder,
    save_checkpoint,
    start_run,
    write_noise,
    write_outputs,
)

__all__ = ["build_backbone", "pretrain"]


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
    result = run_folder(out_dir)
    with distributed(config.device) as ctx, deterministic(ctx.device):
        finished = start_run(result, config, resume, ctx)
        if finished is not None:
            return PretrainResult(result.out_dir, finished)
        if ctx.device.type == "cpu":
            tune_cpu_allocator()
        order_gen = seed_everything(config.seed)

        # -- data: the labels are corrupted exactly once; every rank reads rank 0's file.
        from ..data import load_dataset

        train = load_dataset(config.dataset, config.split, config.limit, config.subset_seed)
        evalset = load_dataset(
            config.eval_dataset or config.dataset, config.eval_split, config.eval_limit, 0
        )
        if ctx.is_main:
            write_noise(result.noise_path, train.labels.astype(np.int64),
                        lambda y: config.noise.apply(y, train.num_classes), resume)
        ctx.barrier()
        labels = read_noise(result.noise_path, train.labels)
        steps = steps_per_epoch(len(train), config.batch_size, ctx.world)

        # -- model: backbone + linear head; the backbone's own preprocessing feeds it.
        backbone = build_backbone(config)
        x_train = model_input(backbone, train.inputs, ctx.device, config.num_workers)
        x_eval = model_input(backbone, evalset.inputs, ctx.device, config.num_workers)
        y_noisy = torch.as_tensor(labels["noisy"], device=ctx.device)
        y_clean = torch.as_tensor(labels["clean"], device=ctx.device)
        y_eval = torch.as_tensor(evalset.labels, device=ctx.device)
        model = _Classifier(backbone.module, backbone.feature_dim, train.num_classes)
        if ctx.world > 1 and ctx.device.type == "cuda":
            # torch synchronises BatchNorm across ranks on CUDA only; on CPU it stays per rank.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(ctx.device)
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr,
                                        momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay)
        # Cosine decay to 0 per step, not per epoch: short runs still anneal smoothly.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * steps
        )

        # -- resume: the checkpoint restores everything the remaining epochs depend on.
        start_epoch, history = 0, []
        if resume and result.checkpoint_path.is_file():
            start_epoch, history = load_checkpoint(
                result.checkpoint_path, model, optimizer, order_gen, ctx.device, scheduler
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
            rows = [local_rows(perm, step, config.batch_size, ctx) for step in range(steps)]
            bar = tqdm(
                total=steps,
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
                    xb = crop_and_flip(xb, crops[idx])
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
                if step % 20 == 0 or step == steps - 1:
                    n = (step + 1) * len(idx)
                    bar.set_postfix(loss=f"{sums[0].item() / n:.3f}",
                                    acc_noisy=f"{sums[1].item() / n:.3f}",
                                    acc_clean=f"{sums[2].item() / n:.3f}")
            bar.close()
            loss_sum, noisy_ok, clean_ok = ctx.sum(sums).tolist()
            seen = steps * config.batch_size
            row.update(train_loss=loss_sum / seen, train_acc_noisy=noisy_ok / seen,
                       train_acc_clean=clean_ok / seen)
            row["eval_acc"] = accuracies(model, x_eval, {"eval": y_eval}, ctx)["eval"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if ctx.is_main:
                save_checkpoint(result.checkpoint_path, model, optimizer, order_gen, history,
                                config.to_dict(), scheduler)
            ctx.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)

        # -- final metrics, in eval mode over the whole training set and the eval set.
        corrupted = torch.as_tensor(labels["changed"], device=ctx.device)
        none = torch.full_like(y_noisy, -1)
        acc = accuracies(model, x_train, {
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
            write_outputs(result, model.backbone, history, metrics)
        ctx.barrier()
    return PretrainResult(result.out_dir, metrics)


class _Classifier(nn.Module):
    """``head(backbone(x))``: the backbone's features ``(B, D)`` through a linear layer."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).reshape(len(x), -1))


def build_backbone(config: PretrainConfig):
    """``create_backbone`` with the run's seed as the init seed, where the factory takes one."""
    from ..backbones import create_backbone, get_spec

    kwargs = dict(config.backbone_kwargs)
    if "seed" in inspect.signature(get_spec(config.backbone).factory).parameters:
        kwargs.setdefault("seed", config.seed)
    return create_backbone(config.backbone, **kwargs)


@torch.no_grad()
def accuracies(
    model: nn.Module,
    x: Preprocessed | Streamed,
    targets: dict[str, torch.Tensor],
    ctx: Dist,
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
