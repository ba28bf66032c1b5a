"""Model input for pre-training: a split preprocessed once into one tensor, or a lazy image
folder streamed through ``DataLoader`` workers (the crop-and-flip augmentation is
:func:`nmtune.augment.crop_and_flip`).

Both inputs give the very same batches for the same rows, so the two paths train alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import torch

#: Rows per forward pass when preprocessing and evaluating (memory, not results).
_EVAL_BATCH = 1024
#: The same for streamed data, where each worker holds two such decoded batches in flight
#: (256 ImageNet images: 154 MB).
_STREAM_EVAL_BATCH = 256


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
