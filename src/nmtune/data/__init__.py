"""Datasets by name: a registry with cards, real offline sources and derived domain shifts.

Names
-----
``mnist``, ``fashion-mnist``, ``digits``, ``bbc-news``, ``tweet-sentiment``
    Registered datasets (``list_datasets()``; ``nmtune datasets`` shows their cards).
``folder:PATH``
    An ImageFolder tree of PNG/JPEG files (``PATH/CLASS/*`` or ``PATH/{train,test}/CLASS/*``).
    A split too large for memory (over 2 GiB decoded: ImageNet) loads lazily: its inputs are
    :class:`~nmtune.data.lazy.LazyImages`, decoded when indexed.
``csv:PATH``, ``jsonl:PATH``
    A text table with ``text`` and ``label`` columns, optionally ``split``.
``BASE~SHIFT[~SHIFT...]``
    An image dataset under domain shifts, e.g. ``mnist~rotate30``, ``digits~framed``,
    ``fashion-mnist~blur3`` (``nmtune.data.shifts.list_shifts()``).

Only downloads are cached on disk; decoded packaged arrays are memoised per process.

This package face only re-exports. The registry lives in :mod:`.registry`; the packaged
datasets register themselves in :mod:`.sources`, the ``folder:``/``csv:``/``jsonl:`` schemes in
:mod:`.files`, and the shifts in :mod:`.shifts` (their torch work in :mod:`.transforms`).
Nothing here imports torch, so cards (``nmtune datasets``) load fast.
"""

from __future__ import annotations

# Importing a source module registers its datasets.
from . import files, sources  # noqa: F401
from .base import Dataset
from .files import from_arrays, load_image_folder, load_text_table
from .registry import (
    DatasetCard,
    dataset_card,
    list_datasets,
    load_dataset,
    register_dataset,
    register_file_source,
    require_dataset,
    unregister_dataset,
)
from .shifts import apply_shift, list_shifts

__all__ = [
    "Dataset",
    "DatasetCard",
    "apply_shift",
    "dataset_card",
    "from_arrays",
    "list_datasets",
    "list_shifts",
    "load_dataset",
    "load_image_folder",
    "load_text_table",
    "register_dataset",
    "register_file_source",
    "require_dataset",
    "unregister_dataset",
]
