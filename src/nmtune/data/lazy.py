"""Image folders too large for memory (ImageNet: 1.28M images): rows decoded when indexed.

:class:`LazyImages` stands where a :class:`~nmtune.data.base.Dataset` keeps its N×C×H×W
array. Indexing it (an int, a slice, an index array or a boolean mask) decodes those files and
returns the float32 array the in-memory loader would hold for them, so code that slices
``dataset.inputs`` batch by batch (feature extraction) works unchanged; ``take`` selects rows
without decoding (subsets stay lazy); and pre-training streams it through a ``DataLoader``.

``load_image_folder(root, split, lazy=None)`` picks this form by itself when the decoded split
would exceed :data:`AUTO_LAZY_BYTES`; ``lazy=True`` / ``lazy=False`` force either form.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._hashing import sha256_parts
from .._validation import NMTuneError
from .base import Dataset

__all__ = ["AUTO_LAZY_BYTES", "DEFAULT_IMAGE_SIZE", "LazyImages", "load_lazy_folder",
           "prefers_lazy"]

#: A folder split whose decoded float32 array would exceed this many bytes loads lazily when
#: the caller leaves ``lazy`` unset: 2 GiB keeps CIFAR-sized trees (50k×3×32×32: 0.6 GB) in
#: memory and sends ImageNet (and any large-image set) to disk.
AUTO_LAZY_BYTES = 2 * 1024**3
#: Side of lazily decoded images when no ``image_size`` is given: ImageNet's training size.
DEFAULT_IMAGE_SIZE = 224
#: Decoding threads per batch: Pillow releases the GIL while it decodes and resizes.
_MAX_THREADS = 8


def _size_pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` from an int side or a pair, checked."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise NMTuneError(
            f"image_size must be a positive int or (height, width), got {image_size!r}"
        )
    return h, w


def decode_cover_crop(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """One image as RGB uint8 ``(H, W, 3)``: resized (bicubic) so it covers ``size``, then
    centre-cropped to it.

    The scale is the larger of ``H / height`` and ``W / width``, so for a square target the
    shorter side becomes the target side and nothing is stretched. An image of the target's
    aspect ratio is simply resized, exactly as the in-memory folder loader resizes it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise NMTuneError(f"cannot decode image {os.fsdecode(path)}: {exc}") from None
    (h, w), (iw, ih) = size, image.size
    scale = max(h / ih, w / iw)
    new_w, new_h = max(w, round(iw * scale)), max(h, round(ih * scale))
    if (new_w, new_h) != (iw, ih):
        image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.uint8)


class LazyImages:
    """A read-only ``(N, 3, H, W)`` float32 image array in [0, 1] decoded from files on access.

    Parameters
    ----------
    paths : sequence of path-like
        One image file per row.
    image_size : int or (int, int)
        Output side, or ``(height, width)``: each image is resized to cover it and
        centre-cropped (:func:`decode_cover_crop`). Always RGB: grey and CMYK files are
        converted, as ImageNet's few grey JPEGs must be.
    threads : int, optional
        Decoding threads per access (default: up to 8, one per CPU).

    Notes
    -----
    ``x[key]`` with an int, slice, integer index array or boolean mask returns a new ndarray
    (an int gives ``(3, H, W)``); ``x.take(indices)`` returns a ``LazyImages`` of those rows
    without decoding anything. Paths are held as one numpy bytes array, not a list of Python
    strings, so forked ``DataLoader`` workers share them instead of copying them page by page
    as reference counts change.
    """

    ndim = 4
    dtype = np.dtype(np.float32)

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
        threads: int | None = None,
    ) -> None:
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.image_size = _size_pair(image_size)
        self.threads = threads if threads is not None else min(_MAX_THREADS, os.cpu_count() or 1)
        if self.threads < 1:
            raise NMTuneError(f"threads must be >= 1, got {self.threads}")

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, *self.image_size)

    @property
    def paths(self) -> list[str]:
        """The files, one per row."""
        return [os.fsdecode(p) for p in self._paths]

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} files, shape={self.shape})"

    def _rows(self, key) -> np.ndarray:
        """Non-negative row numbers selected by ``key``, checked against the length."""
        if isinstance(key, slice):
            return np.arange(*key.indices(len(self)))
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise NMTuneError(f"boolean mask of shape {rows.shape} for {len(self)} rows")
            return np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise NMTuneError(f"index LazyImages with an int, a slice or 1-d integers, got {key!r}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        return np.where(rows < 0, rows + len(self), rows)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self[np.array([key])][0]
        rows = self._rows(key)
        out = np.empty((len(rows), *self.image_size, 3), dtype=np.uint8)

        def fill(i: int) -> None:
            out[i] = decode_cover_crop(self._paths[rows[i]], self.image_size)

        if self.threads == 1 or len(rows) < 2:
            for i in range(len(rows)):
                fill(i)
        else:
            with ThreadPoolExecutor(min(self.threads, len(rows))) as pool:
                list(pool.map(fill, range(len(rows))))  # list() re-raises a worker's error
        # The in-memory loader's arithmetic: uint8 -> float32, divided by float32(255).
        x = out.astype(np.float32) / np.float32(255)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def take(self, indices, axis: int = 0) -> LazyImages:
        """The rows ``indices``, still lazy (``ndarray.take(indices, axis=0)``'s meaning)."""
        if axis != 0:
            raise NMTuneError(f"LazyImages selects rows only (axis=0), got axis={axis}")
        subset = LazyImages.__new__(LazyImages)
        subset._paths = self._paths[self._rows(indices)]
        subset.image_size, subset.threads = self.image_size, self.threads
        return subset

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Decode every row (memory: ``N × 3 × H × W × 4`` bytes)."""
        x = self[:]
        return x if dtype is None else x.astype(dtype)


def prefers_lazy(paths: Sequence[Path], image_size: int | tuple[int, int] | None) -> bool:
    """Whether a split should load lazily: its decoded float32 RGB array would exceed
    :data:`AUTO_LAZY_BYTES`, estimated from ``image_size`` or else the first image's size
    (only its header is read)."""
    if image_size is None:
        from PIL import Image

        try:
            with Image.open(paths[0]) as first:
                w, h = first.size
        except OSError as exc:
            raise NMTuneError(f"cannot read image {paths[0]}: {exc}") from None
    else:
        h, w = _size_pair(image_size)
    return len(paths) * 3 * h * w * np.dtype(np.float32).itemsize > AUTO_LAZY_BYTES


def load_lazy_folder(
    root: str | os.PathLike,
    split: str,
    files: Sequence[tuple[Path, int]],
    classes: tuple[str, ...],
    image_size: int | tuple[int, int] | None = None,
) -> Dataset:
    """A :class:`Dataset` of one folder split whose inputs are :class:`LazyImages`.

    Parameters
    ----------
    root : path-like
        The tree's root (file paths enter the fingerprint relative to it).
    split : str
    files : sequence of (path, label)
        The split's files, sorted, as ``image_folder_files`` lists them.
    classes : tuple of str
    image_size : int or (int, int), optional
        Default :data:`DEFAULT_IMAGE_SIZE`.

    Notes
    -----
    The fingerprint hashes, for every file in order, its path relative to ``root``, its size
    and its modification time (ns), plus the labels, the output size and the decoding mode; not
    the pixels, which would mean reading the whole tree (150 GB for ImageNet) to key a cache.
    Editing a file changes its size or mtime, and so the fingerprint; copying the tree without
    preserving mtimes changes it too (a cache miss, never a wrong hit).
    """
    size = _size_pair(image_size if image_size is not None else DEFAULT_IMAGE_SIZE)
    base = Path(root).expanduser()
    labels = np.fromiter((label for _, label in files), dtype=np.int64, count=len(files))
    h = hashlib.sha256()
    for path, _ in files:
        stat = path.stat()
        h.update(f"{path.relative_to(base)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    h.update(labels.data)
    return Dataset(
        name=f"folder:{root}",
        split=split,
        inputs=LazyImages([path for path, _ in files], size),
        labels=labels,
        classes=tuple(classes),
        modality="image",
        fingerprint=sha256_parts(h.hexdigest(), "lazy-rgb-cover-crop", size, split),
    )
