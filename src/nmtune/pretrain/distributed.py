"""Where a process stands in a run (single process or ``torchrun``), deterministic kernels, and
the batch arithmetic every rank must agree on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._torch import resolve_device
from .._validation import NMTuneError


@dataclass(frozen=True)
class Dist:
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
def distributed(device: str) -> Iterator[Dist]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1``, and leave it afterwards.

    A group the caller already initialised is used and left open.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Dist(0, 1, resolve_device(device))
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
        yield Dist(dist.get_rank(), dist.get_world_size(), dev)
        dist.barrier()
    finally:
        if owns_group:
            dist.destroy_process_group()


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
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


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Global batches of ``batch_size`` rows per epoch over ``n`` rows, full ones only.

    A short last batch would give BatchNorm (and every DDP rank, and a contrastive loss) too
    few rows; and each of ``world`` ranks takes an equal share of every batch.
    """
    if batch_size % world:
        raise NMTuneError(
            f"batch_size {batch_size} must be divisible by the number of processes ({world})"
        )
    if n < batch_size:
        raise NMTuneError(f"the training set has {n} rows, fewer than batch_size {batch_size}")
    return n // batch_size


def local_rows(perm: torch.Tensor, step: int, batch_size: int, ctx: Dist) -> torch.Tensor:
    """This rank's contiguous share of global batch ``step`` of the epoch's permutation."""
    local = batch_size // ctx.world
    start = step * batch_size + ctx.rank * local
    return perm[start : start + local]
