"""Seeded per-row augmentation and the affine image warps behind it, in one place.

- :func:`row_seeds` / :func:`row_uniforms`: independent draws per (seed, view, row), so an
  augmented view does not depend on the batch or shard a row falls in (the feature cache).
- :class:`ImageAugment` and :class:`WordDropout`: the feature cache's default views.
- :func:`crop_and_flip`: pre-training's random-resized crop and horizontal flip.

Every affine image warp goes through :func:`warp` (one ``affine_grid`` + bilinear
``grid_sample``), the ``rotate`` shift's (:mod:`nmtune.data.transforms`) included.
The draws and outputs are part of cache keys and results: keep them bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Random-resized-crop ranges of the standard ImageNet recipe (Szegedy et al. 2015, as in
#: torchvision): crop area as a fraction of the image, and crop aspect ratio (width / height).
_CROP_AREA = (0.08, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)


# --------------------------------------------------------------------------- seeded draws

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def row_seeds(seed: int, view: int, start: int, stop: int) -> np.ndarray:
    """Independent uint64 seeds for rows ``start..stop-1`` of one view: shape (stop - start,)."""
    with np.errstate(over="ignore"):
        base = _mix64(np.array([seed % 2**64], dtype=np.uint64) * _GOLDEN + np.uint64(view))
        return _mix64(base + np.arange(start, stop, dtype=np.uint64) * _GOLDEN)


def row_uniforms(seeds: np.ndarray, k: int) -> np.ndarray:
    """``k`` uniforms in [0, 1) per seed, shape (len(seeds), k): SplitMix64 streams, vectorised."""
    with np.errstate(over="ignore"):
        steps = np.arange(1, k + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix64(seeds[:, None].astype(np.uint64) + steps[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class ImageAugment:
    """Random crop-and-resize (zoom), translation and small rotation, one draw per row.

    Parameters
    ----------
    scale : (float, float)
        Range of the crop's side relative to the image (1 = no zoom).
    max_shift : float
        Largest translation, as a fraction of the image side.
    max_degrees : float
        Largest rotation either way.
    """

    scale: tuple[float, float] = (0.8, 1.0)
    max_shift: float = 0.1
    max_degrees: float = 10.0

    @property
    def identity(self) -> str:
        return repr(self)

    def __call__(self, batch: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        """``batch`` (B, C, H, W) float, ``seeds`` (B,) uint64 -> augmented (B, C, H, W) float32."""
        u = torch.from_numpy(row_uniforms(seeds, 4)).float()
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        angle = torch.deg2rad((2 * u[:, 1] - 1) * self.max_degrees)
        # affine_grid maps output to input coordinates in [-1, 1]: a shift of f*side is 2f.
        tx, ty = (2 * u[:, 2] - 1) * 2 * self.max_shift, (2 * u[:, 3] - 1) * 2 * self.max_shift
        cos, sin = s * torch.cos(angle), s * torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        return warp(torch.as_tensor(np.asarray(batch, dtype=np.float32)), theta).numpy()


@dataclass(frozen=True)
class WordDropout:
    """Drop each whitespace-separated word with probability ``p`` (at least one word is kept).

    The only augmentation that works for any text backbone, API-only ones included, because it
    changes the input text rather than the model.
    """

    p: float = 0.1

    @property
    def identity(self) -> str:
        return repr(self)

    def __call__(self, batch: list[str], seeds: np.ndarray) -> list[str]:
        out = []
        for text, seed in zip(batch, seeds, strict=True):
            words = text.split()
            if len(words) < 2:
                out.append(text)
                continue
            u = row_uniforms(seed[None], len(words))[0]
            keep = u >= self.p
            keep[np.argmax(u)] = True
            out.append(" ".join(w for w, k in zip(words, keep, strict=True) if k))
        return out


# --------------------------------------------------------------------------- image warps


def warp(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Resample each image of ``x`` (B, C, H, W) through its 2×3 affine matrix ``theta``.

    ``theta`` (B, 2, 3) maps output to input coordinates in ``[-1, 1]`` (``affine_grid``'s
    convention, ``align_corners=False``); sampling is bilinear, outside pixels ``padding_mode``.
    """
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def crop_and_flip(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
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
    return warp(x, theta.to(x.dtype), padding_mode="border")
