"""Contrastive (CLIP) pre-training on image–text pairs with caption-swap noise.

:func:`train_clip` is the loop: in-memory pairs, AdamW with open_clip's warm-up + cosine
schedule, CLIP's symmetric InfoNCE (:func:`nmtune.contrastive.clip_loss`), checkpoint per
epoch, resumable, ``torchrun``-aware. :func:`pretrain_clip` runs it from a
:class:`ClipConfig` into the same run folder as supervised pre-training
(:func:`nmtune.pretrain.pretrain`):

==================  ==========================================================================
``config.json``     the :class:`ClipConfig`; a later call with another config is refused
``noise.npz``       ``clean``, ``noisy`` captions (str) and ``changed`` (N,) bool
``checkpoint.pt``   last finished epoch (removed once the run completes)
``history.csv/png`` one row per epoch: lr, train loss, ``exp(logit_scale)``
``backbone.pt``     state_dict of the *image tower* alone: what
                    ``create_backbone(name, weights=...)`` loads to extract its features
``model.pt``        state_dict of the whole :class:`~nmtune.contrastive.CLIPModel` (both
                    towers, projections, temperature): what zero-shot evaluation needs
``history.json``    the loop's own per-epoch records
``metrics.json``    final loss and temperature, realised caption-swap rate, sizes
==================  ==========================================================================

:func:`export_pairs` writes the very pairs a run trains on (noise included) as WebDataset
shards and an open_clip CSV, for open_clip's own trainer at GPU scale.
:func:`load_clip_run` rebuilds a finished run's model from ``config.json`` and ``model.pt``, for
zero-shot evaluation (:mod:`nmtune.zeroshot`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._io import atomic_path, make_folder, write_json_atomic
from .._torch import seed_everything
from .._validation import NMTuneError, check_int
from ..contrastive import CLIPModel, TextTransformer, clip_loss
from .config import ClipConfig, PretrainResult
from .distributed import deterministic, distributed, local_rows, steps_per_epoch
from .loop import build_backbone
from .runfiles import (
    broken,
    load_checkpoint,
    read_noise,
    read_run_json,
    run_folder,
    save_checkpoint,
    start_run,
    write_noise,
    write_outputs,
)

__all__ = ["ClipConfig", "build_clip_model", "export_pairs", "load_clip_run", "pretrain_clip",
           "train_clip"]


# --------------------------------------------------------------------------- the loop


def train_clip(
    model: CLIPModel,
    images,
    captions: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 5e-4,
    weight_decay: float = 0.1,
    warmup_steps: int = 0,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` contrastively on in-memory pairs; resumable, ``torchrun``-aware.

    Every epoch visits a seeded permutation of the pairs in full global batches of
    ``batch_size`` (the short tail is dropped: every rank needs equal shares, and the loss
    equal batch sizes), AdamW with open_clip's warm-up + cosine schedule, and the logit scale
    clamped after every step. Under ``torchrun`` each rank takes ``batch_size / W`` rows of
    every global batch and back-propagates ``W · loss`` (see :mod:`nmtune.contrastive`), so the
    steps equal a one-process run's. After each epoch rank 0 writes ``out_dir/checkpoint.pt``
    atomically; a rerun with ``resume=True`` continues from it, and on CPU (deterministic
    kernels, no randomness but the seeded data order) ends bit-identical to an
    uninterrupted run. The trained weights go to ``out_dir/model.pt`` and the per-epoch
    records to ``out_dir/history.json``.

    Parameters
    ----------
    model : CLIPModel
    images : array-like of shape (N, C, H, W), float32
        Already preprocessed for the image tower.
    captions : sequence of str, length N
    out_dir : path
    epochs, batch_size : int
        ``batch_size`` is global and must be divisible by the number of processes.
    lr, weight_decay : float
    warmup_steps : int
    seed : int
        Seeds the data order.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``; under ``torchrun`` with CUDA, ``cuda:LOCAL_RANK``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` when present (else start over); a checkpoint
        of other settings or other data is refused.
    on_epoch : callable, optional
        Called on rank 0 with each epoch's record, after its checkpoint is written.

    Returns
    -------
    history : list of dict
        One record per epoch: ``epoch``, ``loss`` (mean over its steps), ``logit_scale``
        (``exp`` of it, after the epoch), ``lr`` (of its last step).
    """
    images = torch.as_tensor(np.asarray(images, dtype=np.float32))
    tokens = model.tokenize(list(captions))
    if len(images) != len(tokens):
        raise NMTuneError(f"{len(images)} images but {len(tokens)} captions")
    check_int(epochs, "epochs", 1)
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.pt"
    settings = {
        "n": len(images),
        "epochs": epochs,  # the learning-rate schedule spans all of them
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "data": _data_digest(images, tokens),
    }
    with distributed(device) as ctx, deterministic(ctx.device):
        steps = steps_per_epoch(len(images), batch_size, ctx.world)
        model.to(ctx.device)
        optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
        order_gen = torch.Generator().manual_seed(seed)
        start, history = 0, []
        if resume and checkpoint.is_file():
            start, history = load_checkpoint(
                checkpoint, model, optimizer, order_gen, ctx.device, expect=settings
            )
        net = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model

        for epoch in range(start, epochs):
            net.train()
            perm = torch.randperm(len(images), generator=order_gen)
            total = torch.zeros((), dtype=torch.float64, device=ctx.device)
            for step in range(steps):
                rows = local_rows(perm, step, batch_size, ctx)
                rate = _cosine_lr(epoch * steps + step, epochs * steps, lr, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = rate
                loss = clip_loss(*net(images[rows].to(ctx.device), tokens[rows].to(ctx.device)))
                optimizer.zero_grad(set_to_none=True)
                (loss * ctx.world).backward()  # DDP averages: W·loss gives the 1-process gradient
                optimizer.step()
                model.clamp_logit_scale_()
                total += loss.detach().double()
            history.append({
                "epoch": epoch + 1,
                "loss": float(total / steps),
                "lr": rate,
                "logit_scale": float(model.logit_scale.detach().exp()),
            })
            if ctx.is_main:
                save_checkpoint(checkpoint, model, optimizer, order_gen, history, settings)
                if on_epoch is not None:
                    on_epoch(history[-1])
            ctx.barrier()

        if ctx.is_main:
            with atomic_path(out_dir / "model.pt") as tmp:
                torch.save(model.state_dict(), tmp)
            write_json_atomic(out_dir / "history.json", history)
    return history


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """CLIP's AdamW groups: no decay on gains, biases and the temperature."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        no_decay = param.ndim < 2 or "logit_scale" in name
        (plain if no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _cosine_lr(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0, as open_clip's default schedule."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * progress))


def _data_digest(images: torch.Tensor, tokens: torch.Tensor) -> str:
    """What a resumed run must train on: the exact images and tokens."""
    digest = hashlib.sha256()
    for t in (images, tokens):
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- the run folder


def pretrain_clip(
    config: ClipConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> PretrainResult:
    """Pre-train a CLIP model of ``config`` into the run folder ``out_dir`` (see module notes).

    Parameters
    ----------
    config : ClipConfig
    out_dir : path
        Created if needed. If it holds a run of another config, :class:`NMTuneError`.
    resume : bool
        Continue from ``checkpoint.pt`` (bit-identical on CPU), or return at once if the run
        already completed. ``False`` starts over.
    progress : bool
        Print one line per epoch (rank 0 only).
    on_epoch_end : callable, optional
        Called on rank 0 as ``on_epoch_end(epoch, record)`` after each epoch's checkpoint.

    Returns
    -------
    PretrainResult
        ``metrics``: ``train_loss`` and ``logit_scale`` of the last epoch,
        ``realised_noise_rate`` (changed captions / N), ``caption_swap`` (the asked rate),
        ``epochs``, ``num_train``, ``feature_dim`` (the image tower's), ``world_size``,
        ``device``, ``seconds`` (of this call).
    """
    result = run_folder(out_dir)
    t0 = time.perf_counter()
    with distributed(config.device) as ctx:
        finished = start_run(result, config, resume, ctx)
        if finished is not None:
            return PretrainResult(result.out_dir, finished)

        # -- data: captions are swapped exactly once; every rank reads rank 0's file.
        images, captions = load_pairs(config)
        clean = np.asarray(captions, dtype=str)
        if ctx.is_main:
            write_noise(result.noise_path, clean, lambda c: noisy_captions(config, c), resume)
        ctx.barrier()
        noise = read_noise(result.noise_path, clean)

        # -- model: the registry backbone as image tower, preprocessed by its own recipe.
        seed_everything(config.seed)
        model, backbone = build_clip_model(config)
        x = torch.cat([backbone.preprocess(images[i : i + 1024])
                       for i in range(0, len(images), 1024)])

        def report(record: dict) -> None:
            if progress:
                print(f"clip epoch {record['epoch']}/{config.epochs}: loss {record['loss']:.4f}, "
                      f"scale {record['logit_scale']:.2f}", flush=True)
            if on_epoch_end is not None:
                on_epoch_end(record["epoch"], record)

        history = train_clip(
            model, x, noise["noisy"].tolist(), result.out_dir, epochs=config.epochs,
            batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
            warmup_steps=config.warmup_steps, seed=config.seed, device=str(ctx.device),
            resume=resume, on_epoch=report,
        )
        rows = [{"epoch": r["epoch"], "lr": r["lr"], "train_loss": r["loss"],
                 "logit_scale": r["logit_scale"]} for r in history]
        metrics = {
            "train_loss": rows[-1]["train_loss"],
            "logit_scale": rows[-1]["logit_scale"],
            "caption_swap": config.caption_swap,
            "realised_noise_rate": float(noise["changed"].mean()),
            "epochs": config.epochs,
            "num_train": len(clean),
            "feature_dim": backbone.feature_dim,
            "world_size": ctx.world,
            "device": ctx.device.type,
            "seconds": time.perf_counter() - t0,
        }
        if ctx.is_main:
            write_outputs(result, model.image_tower, rows, metrics)
        ctx.barrier()
    return PretrainResult(result.out_dir, metrics)


def build_clip_model(config: ClipConfig) -> tuple[CLIPModel, object]:
    """The untrained CLIP model of ``config`` and the registry backbone whose module is its
    image tower (for the backbone's preprocessing and feature width)."""
    backbone = build_backbone(config)
    text = TextTransformer(config.text_width, config.text_layers, config.text_heads,
                           config.context_length)
    return CLIPModel(backbone.module, text, config.embed_dim,
                     image_dim=backbone.feature_dim), backbone


def load_clip_run(run_dir: str | os.PathLike) -> CLIPModel:
    """The trained :class:`~nmtune.contrastive.CLIPModel` of a contrastive run folder, on CPU
    in eval mode: rebuilt from its ``config.json`` and loaded from its ``model.pt``.

    Raises
    ------
    NMTuneError
        When the folder holds no finished contrastive run.
    """
    result = PretrainResult(Path(run_dir), {})
    if not (result.config_path.is_file() and result.model_path.is_file()):
        raise NMTuneError(f"{run_dir} holds no finished CLIP run (config.json and model.pt); "
                          "train one with nmtune pretrain --objective clip --out DIR")
    raw = read_run_json(result.config_path)
    if raw.get("objective") != "clip":
        raise NMTuneError(f"{run_dir} holds a supervised run: zero-shot needs a CLIP run")
    model, _ = build_clip_model(ClipConfig.from_dict({**raw, "device": "cpu"}))
    try:
        state = torch.load(result.model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, ValueError) as exc:  # torn file or another model's weights
        raise broken(result.model_path, exc) from None
    return model.eval()


def load_pairs(config: ClipConfig) -> tuple[np.ndarray, list[str]]:
    """The clean pairs of ``config``: images (N, C, H, W) float32 in [0, 1] and captions."""
    if config.pairs is None:
        from ..data.pairs import synthetic_pairs

        pairs = synthetic_pairs(config.dataset, config.split, config.limit, config.seed)
        return pairs.images, list(pairs.captions)
    from ..data.pairs import open_pairs

    read = list(itertools.islice(open_pairs(config.pairs), config.limit))
    if not read:
        raise NMTuneError(f"{config.pairs} holds no image-text pairs")
    decoded = []
    for pair in read:
        if not pair.caption.strip():  # CLIP would learn the image against no text at all
            raise NMTuneError(f"{config.pairs}: {pair.key}.{pair.ext} has an empty caption")
        try:
            decoded.append(pair.decode())
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files
            raise NMTuneError(f"{config.pairs}: {pair.key}.{pair.ext} is not a readable "
                              f"image ({' '.join(str(exc).split())})") from None
    shapes = sorted({d.shape for d in decoded})
    if len(shapes) > 1:
        raise NMTuneError(f"{config.pairs}: images differ in size ({shapes[0]} and {shapes[-1]}); "
                          "resize them to one size first")
    return np.stack(decoded), [pair.caption for pair in read]


def noisy_captions(config: ClipConfig, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``captions`` with ``config``'s caption-swap noise: ``(noisy, changed)``."""
    if config.caption_swap == 0:
        return captions.copy(), np.zeros(len(captions), dtype=bool)
    from ..noise import caption_swap

    return caption_swap(captions, config.caption_swap, config.noise_seed)


def export_pairs(config: ClipConfig, folder: str | os.PathLike, per_shard: int = 1000) -> dict:
    """Write the noisy pairs a run of ``config`` trains on for open_clip's own trainer.

    ``folder/shards/shard-{000000..}.tar`` (WebDataset) and ``folder/pairs.csv`` (open_clip's
    ``filepath``/``title`` layout, images under ``folder/images``), plus ``folder/noise.npz``
    as a run writes it. Returns ``{"shards": pattern, "csv": path, "num_pairs": N,
    "realised_noise_rate": rate}``.
    """
    from ..data.pairs import Pair, open_pairs, synthetic_pairs, write_csv, write_shards

    folder = Path(folder)
    _, captions = load_pairs(config)
    make_folder(folder, "the exported pairs")
    clean = np.asarray(captions, dtype=str)
    write_noise(folder / "noise.npz", clean, lambda c: noisy_captions(config, c), resume=False)
    noise = read_noise(folder / "noise.npz", clean)
    noisy = noise["noisy"].tolist()

    def pairs():
        if config.pairs is None:
            base = synthetic_pairs(config.dataset, config.split, config.limit, config.seed)
            yield from dataclasses.replace(base, captions=noisy).pairs()
            return
        read = itertools.islice(open_pairs(config.pairs), config.limit)  # as load_pairs
        for pair, caption in zip(read, noisy, strict=True):
            yield Pair(pair.key, pair.image, pair.ext, caption)

    pattern = write_shards(pairs(), folder / "shards", per_shard=per_shard)
    table = write_csv(pairs(), folder / "pairs.csv")
    return {"shards": pattern, "csv": str(table), "num_pairs": len(noisy),
            "realised_noise_rate": float(noise["changed"].mean())}
