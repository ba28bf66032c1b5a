"""Torch plumbing shared by training code: device choice, autocast, seeding, allocator tuning."""

from __future__ import annotations

import contextlib
import ctypes
import random

import numpy as np
import torch

from ._validation import NMTuneError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NMTuneError(f"device {device!r} requested but CUDA is not available")
    return dev


def parse_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``, whether or not this machine has one: a config is
    checked where it is written, and may run elsewhere."""
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise NMTuneError(f"unknown device {device!r}: {exc}") from None


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA; a no-op on CPU, where it would be slower and less exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may draw from the global RNG
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


_MALLOC_TUNED = False


def tune_cpu_allocator() -> None:
    """Keep glibc from returning large freed blocks to the OS after every op.

    Measured here (docs/design.md §5.1): disabling mmap for large blocks and raising the trim
    threshold gives 1.7-1.9x CPU forward speed, as big activations are no longer re-faulted in.
    Harmless where glibc is absent.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
