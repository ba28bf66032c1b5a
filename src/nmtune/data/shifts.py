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
and (for random shifts) the seed. Each :class:`Shift` also states its effect on the shape of
an image (:meth:`Shift.output_shape`), which dataset cards use. This module loads without
torch; the image work is done by :mod:`.transforms`, vectorised in torch, in chunks to bound
memory.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .._hashing import sha256_parts
from .._validation import NMTuneError
from .base import Dataset

if TYPE_CHECKING:
    import torch

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
#: MNIST's framing: the ink's longer side scaled to 20 pixels, centred in 28×28.
MNIST_SIZE, MNIST_BOX = 28, 20

# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Shift:
    """A named shift and what it does to a dataset's images and to its card.

    Attributes
    ----------
    name : str
    param : {"degrees", "severity"} or None
        The integer parameter the spec carries after the name (``rotate30``, ``blur3``).
    random : bool
        Whether the shift draws from the seed (and the seed enters the fingerprint).
    description : str
    apply : callable
        ``apply(transforms, images, value, generator) -> images`` on (N, C, H, W) tensors;
        :mod:`.transforms` is passed in, so this table loads without torch.
    reshape : callable or None
        ``reshape((C, H, W)) -> (C, H, W)``: the shape of one output image, for dataset cards;
        ``None`` when the shape is unchanged.
    """

    name: str
    param: str | None
    random: bool
    description: str
    apply: Callable[[ModuleType, torch.Tensor, int | None, torch.Generator], torch.Tensor]
    reshape: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None

    @property
    def usage(self) -> str:
        return {"degrees": f"{self.name}<DEG>", "severity": f"{self.name}<1-5>"}.get(
            self.param, self.name
        )

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(C, H, W) of an image after this shift, given its shape before."""
        return shape if self.reshape is None else self.reshape(shape)


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift(
            "rotate",
            "degrees",
            False,
            "rotate counter-clockwise by DEG degrees, zero fill",
            lambda T, x, v, g: T.rotate_images(x, v),
        ),
        Shift(
            "invert",
            None,
            False,
            "invert intensities: 1 - x",
            lambda T, x, v, g: T.invert_images(x),
        ),
        Shift(
            "mnistm",
            None,
            True,
            "MNIST-M style |natural photo crop - image|, 3 channels",
            lambda T, x, v, g: T.blend_onto_natural(x, g),
            reshape=lambda shape: (3, *shape[1:]),
        ),
        Shift(
            "framed",
            None,
            False,
            f"re-frame like MNIST: {MNIST_BOX}x{MNIST_BOX} ink box centred by mass in "
            f"{MNIST_SIZE}x{MNIST_SIZE}",
            lambda T, x, v, g: T.frame_like_mnist(x, MNIST_SIZE, MNIST_BOX),
            reshape=lambda shape: (shape[0], MNIST_SIZE, MNIST_SIZE),
        ),
        Shift(
            "blur",
            "severity",
            False,
            f"Gaussian blur, sigma {BLUR_SIGMA} px by severity",
            lambda T, x, v, g: T.gaussian_blur(x, BLUR_SIGMA[v - 1]),
        ),
        Shift(
            "noise",
            "severity",
            True,
            f"Gaussian noise, std {NOISE_STD} by severity",
            lambda T, x, v, g: T.gaussian_noise(x, NOISE_STD[v - 1], g),
        ),
        Shift(
            "shot",
            "severity",
            True,
            f"Poisson shot noise, {SHOT_PHOTONS} photons by severity",
            lambda T, x, v, g: T.shot_noise(x, SHOT_PHOTONS[v - 1], g),
        ),
        Shift(
            "elastic",
            "severity",
            True,
            f"elastic distortion, alpha {ELASTIC_ALPHA}, sigma {ELASTIC_SIGMA:g} by severity",
            lambda T, x, v, g: T.elastic_images(x, ELASTIC_ALPHA[v - 1], ELASTIC_SIGMA, g),
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
    import torch

    from . import transforms

    shift, value = parse_shift(spec)
    generator = torch.Generator().manual_seed(seed)
    images = torch.tensor(np.asarray(dataset.inputs), dtype=torch.float32)
    with torch.no_grad():
        shifted = torch.cat(
            [shift.apply(transforms, chunk, value, generator) for chunk in images.split(_CHUNK)]
        )
    return Dataset(
        name=f"{dataset.name}~{spec}",
        split=dataset.split,
        inputs=np.ascontiguousarray(shifted.clamp_(0, 1).numpy()),
        labels=dataset.labels,
        classes=dataset.classes,
        modality="image",
        fingerprint=sha256_parts(dataset.fingerprint, "shift", spec, seed if shift.random else ""),
        info={**dataset.info, "shifts": [*dataset.info.get("shifts", []), spec]},
    )
