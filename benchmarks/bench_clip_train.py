"""Throughput of ``train_clip`` against a bare loop of the same towers, loss and batches.

Both train a CLIP model (ResNet-8 image tower, the built-in byte-level text transformer) on
the offline synthetic MNIST pairs with AdamW, the same seeded batch order and the symmetric
InfoNCE loss; the bare loop has no schedule, no logit-scale clamp, no checkpoints and no
history. Runs alternate (bare, train_clip, bare, train_clip, ...) so load from other jobs
hits both alike, after an untimed warm-up of each; prints pairs per second of each and the
ratio (the issue asks >= 0.9).

    python benchmarks/bench_clip_train.py [--pairs 2048] [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from nmtune.backbones import create_backbone
from nmtune.contrastive import CLIPModel, TextTransformer, clip_loss
from nmtune.data.pairs import synthetic_pairs
from nmtune.pretrain import train_clip

BATCH = 128


def build() -> CLIPModel:
    torch.manual_seed(0)
    text = TextTransformer(width=64, layers=2, heads=4, context_length=64)
    return CLIPModel(create_backbone("resnet8").module, text, embed_dim=64)


def bare_loop(images: torch.Tensor, captions: list[str], epochs: int) -> float:
    """The minimum a contrastive trainer does; returns seconds."""
    model = build()
    start = time.perf_counter()
    tokens = model.tokenize(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        for step in range(len(images) // BATCH):
            rows = order[step * BATCH : (step + 1) * BATCH]
            loss = clip_loss(*model(images[rows], tokens[rows]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def nmtune_loop(images: torch.Tensor, captions: list[str], epochs: int) -> float:
    model = build()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_clip(model, images, captions, out, epochs=epochs, batch_size=BATCH, resume=False)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    data = synthetic_pairs("mnist", "train", limit=args.pairs, seed=0)
    images = torch.from_numpy(data.images)
    seen = (args.pairs // BATCH) * BATCH * args.epochs
    # Warm both paths up (first-call kernel selection and allocation), untimed.
    bare_loop(images[: 2 * BATCH], data.captions[: 2 * BATCH], 1)
    nmtune_loop(images[: 2 * BATCH], data.captions[: 2 * BATCH], 1)
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(images, data.captions, args.epochs))
        ours.append(nmtune_loop(images, data.captions, args.epochs))
    print(f"{args.pairs} pairs, batch {BATCH}, {args.epochs} epochs, {args.repeats} repeats, "
          f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    for name, times in (("bare loop", bare), ("train_clip", ours)):
        best = min(times)
        print(f"{name:<11} {seen / best:8.1f} pairs/s (best of {len(times)}: "
              f"{best:.2f} s; median {statistics.median(times):.2f} s)")
    print(f"train_clip / bare throughput: {min(bare) / min(ours):.3f}")


if __name__ == "__main__":
    main()
