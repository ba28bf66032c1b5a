"""Named, seeded domain shifts that turn an image dataset into an out-of-domain test set.

Naming scheme: ``BASE~SHIFT`` (chainable, applied left to right), where SHIFT is a shift name
followed by its integer parameter where it has one::

    mnist~rotate30       rotated by 30 degrees (counter-clockwise)
    mnist~invert         1 - x
    mnist~mnistm         |natural-image crop - digit|, 3 channels (MNIST-M style)
    fashion-mnist~blur3  Gaussian blur at severity 3 of 5 (also noise, shot, elastic)
    digits~framed        re-framed like MNIST (20×20 box, centred by mass in 28×28)

Every shift is a pure function of the images and, for the random ones, a seed; the derived
dataset gets the name ``BASE~SHIFT`` and a fingerprint derived from the base's, the shift
and (for random shifts) the seed. Work is vectorised in torch, in chunks to bound memory.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import NMTuneError
from .base import Dataset, _digest

#: Images per chunk: bounds the memory of the elastic/rotation grids on 50k-image splits.
_CHUNK = 4096

# Severity tables (index = severity - 1). Noise strengths are per pixel, so ImageNet-C's values
# (Hendrycks & Dietterich 2019) carry over to any resolution; blur depends on resolution, so it
# uses CIFAR-10-C's values, made for 32-pixel images like ours.
NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_PHOTONS = (60, 25, 12, 5, 3)
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
# Elastic distortion after Simard et al. (2003), whose MNIST setting is alpha=34, sigma=4
# (severity 4 here).
ELASTIC_ALPHA = (8, 16, 24, 34, 44)
ELASTIC_SIGMA = 4.0

MNIST_SIZE, MNIST_BOX = 28, 20


# --------------------------------------------------------------------------- image functions
# Each takes and returns float tensors of shape (N, C, H, W) with values in [0, 1].


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
    grid = F.affine_grid(matrix.expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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


def frame_like_mnist(x: torch.Tensor, ink: float = 0.05) -> torch.Tensor:
    """Re-frame images the way MNIST was made: 20×20 box, centred by mass in 28×28.

    Each image's ink bounding box (pixels above ``ink``) is scaled, keeping its aspect ratio,
    so its longer side is 20 pixels, then placed in a blank 28×28 frame with its centre of
    mass at the frame's centre (to the nearest pixel). Digits that fill their whole frame
    (sklearn's 8×8 digits) otherwise look nothing like MNIST to a model trained on it.
    """
    mask = x.mean(1) > ink  # (N, H, W)
    top, height = _extent(mask.any(2))
    left, width = _extent(mask.any(1))
    scale = MNIST_BOX / torch.maximum(height, width).clamp_min(1)
    size_y = (height * scale).round().clamp_min(1)
    size_x = (width * scale).round().clamp_min(1)
    # First pass with the box centred; its centre of mass then gives the final placement.
    start_y, start_x = (MNIST_SIZE - size_y) / 2, (MNIST_SIZE - size_x) / 2
    framed = _resample_box(x, (top, height, size_y, start_y), (left, width, size_x, start_x))
    com_y, com_x = _centre_of_mass(framed)
    centre = (MNIST_SIZE - 1) / 2
    start_y = (start_y + (centre - com_y).round()).clamp(
        torch.zeros_like(size_y), MNIST_SIZE - size_y
    )
    start_x = (start_x + (centre - com_x).round()).clamp(
        torch.zeros_like(size_x), MNIST_SIZE - size_x
    )
    framed = _resample_box(x, (top, height, size_y, start_y), (left, width, size_x, start_x))
    return framed * mask.flatten(1).any(1)[:, None, None, None]  # blank images stay blank


def _extent(any_ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First inked index and inked length along one axis, from an (N, L) boolean mask."""
    length = any_ink.shape[1]
    first = any_ink.int().argmax(1)
    last = length - 1 - any_ink.flip(1).int().argmax(1)
    return first.float(), (last - first + 1).float()


def _resample_box(x: torch.Tensor, rows: tuple, cols: tuple) -> torch.Tensor:
    """Bilinear resampling of each image's box into a 28×28 frame.

    ``rows``/``cols`` are per-image tensors (source start, source length, target length,
    target start), in pixels. Frame pixels outside the target box are zero.
    """
    h, w = x.shape[-2:]
    axis = torch.arange(MNIST_SIZE, dtype=x.dtype) + 0.5

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
            gx[:, None, :].expand(n, MNIST_SIZE, MNIST_SIZE),
            gy[:, :, None].expand(n, MNIST_SIZE, MNIST_SIZE),
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


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Shift:
    """A named shift: ``apply(images, value, generator)``, with ``value`` parsed from the spec."""

    name: str
    param: str | None  # "degrees", "severity" or None
    random: bool
    description: str
    apply: Callable[[torch.Tensor, int | None, torch.Generator], torch.Tensor]

    @property
    def usage(self) -> str:
        return {"degrees": f"{self.name}<DEG>", "severity": f"{self.name}<1-5>"}.get(
            self.param, self.name
        )


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift(
            "rotate",
            "degrees",
            False,
            "rotate counter-clockwise by DEG degrees, zero fill",
            lambda x, v, g: rotate_images(x, v),
        ),
        Shift("invert", None, False, "invert intensities: 1 - x", lambda x, v, g: invert_images(x)),
        Shift(
            "mnistm",
            None,
            True,
            "MNIST-M style |natural photo crop - image|, 3 channels",
            lambda x, v, g: blend_onto_natural(x, g),
        ),
        Shift(
            "framed",
            None,
            False,
            "re-frame like MNIST: 20x20 ink box centred by mass in 28x28",
            lambda x, v, g: frame_like_mnist(x),
        ),
        Shift(
            "blur",
            "severity",
            False,
            f"Gaussian blur, sigma {BLUR_SIGMA} px by severity",
            lambda x, v, g: gaussian_blur(x, BLUR_SIGMA[v - 1]),
        ),
        Shift(
            "noise",
            "severity",
            True,
            f"Gaussian noise, std {NOISE_STD} by severity",
            lambda x, v, g: gaussian_noise(x, NOISE_STD[v - 1], g),
        ),
        Shift(
            "shot",
            "severity",
            True,
            f"Poisson shot noise, {SHOT_PHOTONS} photons by severity",
            lambda x, v, g: shot_noise(x, SHOT_PHOTONS[v - 1], g),
        ),
        Shift(
            "elastic",
            "severity",
            True,
            f"elastic distortion, alpha {ELASTIC_ALPHA}, sigma {ELASTIC_SIGMA:g} by severity",
            lambda x, v, g: elastic_images(x, ELASTIC_ALPHA[v - 1], ELASTIC_SIGMA, g),
        ),
    )
}

_SPEC = re.compile(r"([a-z]+)(-?\d+)?")


def list_shifts() -> dict[str, str]:
    """``{usage: description}`` of every shift, e.g. ``{"rotate<DEG>": "rotate ...", ...}``."""
    return {s.usage: s.description for s in SHIFTS.values()}


def parse_shift(spec: str) -> tuple[Shift, int | None]:
    """The shift and its parameter named by ``spec`` (``"rotate30"``, ``"blur3"``, ``"invert"``)."""
    match = _SPEC.fullmatch(spec)
    shift = SHIFTS.get(match.group(1)) if match else None
    if shift is None:
        close = difflib.get_close_matches(spec, [s.usage for s in SHIFTS.values()], n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise NMTuneError(
            f"unknown shift {spec!r}{hint} Known: {', '.join(s.usage for s in SHIFTS.values())}"
        )
    value = match.group(2)
    if shift.param is None:
        if value is not None:
            raise NMTuneError(f"shift {shift.name!r} takes no number, got {spec!r}")
        return shift, None
    if value is None:
        raise NMTuneError(f"shift {spec!r} needs a number: {shift.usage}")
    value = int(value)
    if shift.param == "severity" and not 1 <= value <= 5:
        raise NMTuneError(f"severity must be 1..5, got {value} in {spec!r}")
    return shift, value


def is_shift(spec: str) -> bool:
    try:
        parse_shift(spec)
    except NMTuneError:
        return False
    return True


def apply_shift(dataset: Dataset, spec: str, seed: int = 0) -> Dataset:
    """``dataset`` under the shift ``spec``, named ``NAME~SPEC``; deterministic given ``seed``.

    Parameters
    ----------
    dataset : Dataset
        An image dataset (N×C×H×W in [0, 1]).
    spec : str
        A shift, e.g. ``"rotate30"``, ``"mnistm"``, ``"blur3"`` (see :func:`list_shifts`).
    seed : int
        Seeds the random shifts; ignored (and not in the fingerprint) for deterministic ones.
    """
    if dataset.modality != "image":
        raise NMTuneError(
            f"shift {spec!r} applies to images; {dataset.name} holds {dataset.modality}"
        )
    shift, value = parse_shift(spec)
    generator = torch.Generator().manual_seed(seed)
    images = torch.tensor(np.asarray(dataset.inputs), dtype=torch.float32)
    with torch.no_grad():
        shifted = torch.cat(
            [shift.apply(chunk, value, generator) for chunk in images.split(_CHUNK)]
        )
    return Dataset(
        name=f"{dataset.name}~{spec}",
        split=dataset.split,
        inputs=np.ascontiguousarray(shifted.clamp_(0, 1).numpy()),
        labels=dataset.labels,
        classes=dataset.classes,
        modality="image",
        fingerprint=_digest(dataset.fingerprint, "shift", spec, seed if shift.random else ""),
        info={**dataset.info, "shifts": [*dataset.info.get("shifts", []), spec]},
    )
