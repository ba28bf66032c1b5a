"""Image transforms behind the named domain shifts (:mod:`.shifts`), vectorised in torch.

Each takes and returns float tensors of shape (N, C, H, W) with values in [0, 1]; the random
ones draw from the ``generator`` they are given, so a shift is deterministic per seed.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import NMTuneError
from ..augment import warp


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate counter-clockwise (as displayed, row 0 on top) about the centre; zero fill.

    Matches ``np.rot90(image, k)`` for ``degrees = 90 k`` on square images.
    """
    n, _, h, w = x.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # Sampling grid: output pixel (u, v) reads input at R(-theta) (u, v) in pixel units; the
    # h/w factors convert pixel units to grid_sample's [-1, 1] coordinates on each axis.
    matrix = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype)
    return warp(x, matrix.expand(n, 2, 3))


def invert_images(x: torch.Tensor) -> torch.Tensor:
    """``1 - x``: light strokes on dark become dark on light."""
    return 1.0 - x


def blend_onto_natural(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MNIST-M style: ``|crop - x|`` with a random crop of a natural photo per image.

    The photos are the two shipped with scikit-learn (``load_sample_images``: a Chinese temple
    and a flower). Output has 3 channels.
    """
    photos = _natural_photos()
    n, _, h, w = x.shape
    count, _, ph, pw = photos.shape
    if h > ph or w > pw:
        raise NMTuneError(f"images of {h}×{w} are larger than the {ph}×{pw} background photos")
    which = torch.randint(count, (n,), generator=generator)
    top = torch.randint(ph - h + 1, (n,), generator=generator)
    left = torch.randint(pw - w + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]
    crops = photos[which[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    return (crops - x.expand(n, 3, h, w)).abs()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, edges replicated."""
    h, w = x.shape[-2:]
    # As two small matrix products (rows, then columns): on CPU this is ~50x faster than a
    # depthwise conv2d at these sizes, and the edge replication is folded into the matrices.
    return _blur_matrix(h, sigma, x.dtype) @ x @ _blur_matrix(w, sigma, x.dtype).T


def _blur_matrix(n: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix applying a 1-D Gaussian with replicate padding to a length-n signal."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1)
    kernel = torch.exp(-0.5 * (taps.to(dtype) / sigma) ** 2)
    kernel /= kernel.sum()
    source = (torch.arange(n)[:, None] + taps[None, :]).clamp_(0, n - 1)
    matrix = torch.zeros((n, n), dtype=dtype)
    matrix.scatter_add_(1, source, kernel.expand(n, -1).contiguous())
    return matrix


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise, clipped to [0, 1]."""
    return (x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp_(0, 1)


def shot_noise(x: torch.Tensor, photons: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson (photon-count) noise: ``Poisson(x * photons) / photons``, clipped to [0, 1]."""
    return (torch.poisson(x * photons, generator=generator) / photons).clamp_(0, 1)


def elastic_images(
    x: torch.Tensor, alpha: float, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003): smoothed random displacements of ``alpha`` px."""
    n, _, h, w = x.shape
    field = torch.rand((n, 2, h, w), generator=generator, dtype=x.dtype) * 2 - 1
    pixels = alpha * gaussian_blur(field, sigma)  # (dx, dy) in pixels
    # grid_sample's coordinates span 2 units over the width (x) and the height (y).
    scale = torch.tensor([2 / w, 2 / h], dtype=x.dtype)
    eye = torch.eye(2, 3, dtype=x.dtype).expand(n, 2, 3)
    grid = (
        F.affine_grid(eye, list(x.shape), align_corners=False) + pixels.permute(0, 2, 3, 1) * scale
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def frame_like_mnist(x: torch.Tensor, size: int, box: int, ink: float = 0.05) -> torch.Tensor:
    """Re-frame images the way MNIST was made (``box`` 20 in ``size`` 28): ink box centred by mass.

    Each image's ink bounding box (pixels above ``ink``) is scaled, keeping its aspect ratio,
    so its longer side is ``box`` pixels, then placed in a blank ``size``×``size`` frame with
    its centre of mass at the frame's centre (to the nearest pixel). Digits that fill their
    whole frame (sklearn's 8×8 digits) otherwise look nothing like MNIST to a model trained on
    it.
    """
    mask = x.mean(1) > ink  # (N, H, W)
    top, height = _extent(mask.any(2))
    left, width = _extent(mask.any(1))
    scale = box / torch.maximum(height, width).clamp_min(1)
    size_y = (height * scale).round().clamp_min(1)
    size_x = (width * scale).round().clamp_min(1)
    # First pass with the box centred; its centre of mass then gives the final placement.
    start_y, start_x = (size - size_y) / 2, (size - size_x) / 2
    framed = _resample_box(x, (top, height, size_y, start_y), (left, width, size_x, start_x), size)
    com_y, com_x = _centre_of_mass(framed)
    centre = (size - 1) / 2
    start_y = (start_y + (centre - com_y).round()).clamp(
        torch.zeros_like(size_y), size - size_y
    )
    start_x = (start_x + (centre - com_x).round()).clamp(
        torch.zeros_like(size_x), size - size_x
    )
    framed = _resample_box(x, (top, height, size_y, start_y), (left, width, size_x, start_x), size)
    return framed * mask.flatten(1).any(1)[:, None, None, None]  # blank images stay blank


def _extent(any_ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First inked index and inked length along one axis, from an (N, L) boolean mask."""
    length = any_ink.shape[1]
    first = any_ink.int().argmax(1)
    last = length - 1 - any_ink.flip(1).int().argmax(1)
    return first.float(), (last - first + 1).float()


def _resample_box(x: torch.Tensor, rows: tuple, cols: tuple, size: int) -> torch.Tensor:
    """Bilinear resampling of each image's box into a ``size``×``size`` frame.

    ``rows``/``cols`` are per-image tensors (source start, source length, target length,
    target start), in pixels. Frame pixels outside the target box are zero.
    """
    h, w = x.shape[-2:]
    axis = torch.arange(size, dtype=x.dtype) + 0.5

    def source(coords, in_size):
        src_start, src_len, dst_len, dst_start = (t[:, None] for t in coords)
        inside = (axis >= dst_start) & (axis < dst_start + dst_len)
        pixel = src_start + (axis - dst_start) * src_len / dst_len  # continuous, edges at ints
        pixel = pixel.clamp(src_start + 0.5, src_start + src_len - 0.5)  # replicate box edges
        return pixel / in_size * 2 - 1, inside  # grid_sample's [-1, 1], align_corners=False

    gy, inside_y = source(rows, h)
    gx, inside_x = source(cols, w)
    n = len(x)
    grid = torch.stack(
        (
            gx[:, None, :].expand(n, size, size),
            gy[:, :, None].expand(n, size, size),
        ),
        dim=-1,
    )
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out * (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def _centre_of_mass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mass = x.mean(1)
    total = mass.sum((1, 2)).clamp_min(1e-8)
    coords = torch.arange(x.shape[-1], dtype=x.dtype)
    return (mass.sum(2) @ coords) / total, (mass.sum(1) @ coords) / total


@functools.lru_cache(maxsize=1)
def _natural_photos() -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images  # two 427×640×3 uint8 photos
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
