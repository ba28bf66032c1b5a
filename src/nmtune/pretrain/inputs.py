"""Model input for pre-training: a split preprocessed once into one tensor, or a lazy image
folder streamed through ``DataLoader`` workers, and the random-resized-crop augmentation.

Both inputs give the very same batches for the same rows, so the two paths train alike.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

#: Rows per forward pass when preprocessing and evaluating (memory, not results).
_EVAL_BATCH = 1024
#: The same for streamed data, where each worker holds two such decoded batches in flight
#: (256 ImageNet images: 154 MB).
_STREAM_EVAL_BATCH = 256
#: Random-resized-crop ranges of the standard ImageNet recipe (Szegedy et al. 2015, as in
#: torchvision): crop area as a fraction of the image, and crop aspect ratio (width / height).
_CROP_AREA = (0.08, 1.0)
_CROP_RATIO = (3 / 4, 4 / 3)


def model_input(
    backbone, inputs, device: torch.device, num_workers: int
) -> Preprocessed | Streamed:
    """The split as model input: streamed when it is a lazy image folder, else preprocessed
    once."""
    from ..data.lazy import LazyImages

    if isinstance(inputs, LazyImages):
        return Streamed(inputs, backbone.preprocess, device, num_workers)
    return Preprocessed(inputs, backbone.preprocess, device)


class Preprocessed:
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


class Streamed:
    """A lazy split decoded and preprocessed batch by batch, by ``num_workers`` processes.

    ``preprocess`` is per image, so a batch equals the rows of the whole split preprocessed at
    once: this path trains exactly as :class:`Preprocessed` does on the same data.
    """

    eval_batch = _STREAM_EVAL_BATCH

    def __init__(self, inputs, preprocess: Callable, device: torch.device, num_workers: int):
        if num_workers > 0:
            # The workers already decode in parallel: one thread each, not workers × threads.
            inputs = copy.copy(inputs)
            inputs.threads = 1
        self.decoder = BatchDecoder(inputs, preprocess)
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


class BatchDecoder(torch.utils.data.Dataset):
    """Map-style dataset whose keys are index tensors: one call decodes a whole batch, so a
    worker's threads decode its images in parallel."""

    def __init__(self, inputs, preprocess: Callable) -> None:
        self.inputs, self.preprocess = inputs, preprocess

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.preprocess(self.inputs[rows.numpy()])


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
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
