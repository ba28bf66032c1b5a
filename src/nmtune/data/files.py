"""The user's own data: image folders (``folder:PATH``), text tables (``csv:PATH``,
``jsonl:PATH``) and in-memory arrays (:func:`from_arrays`), read on every call.

The ``folder:``, ``csv:`` and ``jsonl:`` name schemes register themselves here.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .._validation import NMTuneError, as_float_array, as_label_array, check_same_length
from .base import Dataset, _dataset, _encode_labels, _stratified_split
from .registry import register_file_source

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Folder names that mark an image tree as split into train/test (and maybe val) subtrees.
SPLIT_DIR_NAMES = ("train", "val", "valid", "validation", "test")


# --------------------------------------------------------------------------- image folders


def load_image_folder(
    root: str | os.PathLike,
    split: str = "train",
    image_size: int | tuple[int, int] | None = None,
    lazy: bool | None = None,
) -> Dataset:
    """An ImageFolder tree: ``root/CLASS/*.png`` or ``root/{train,test}/CLASS/*.png``.

    Parameters
    ----------
    root : path-like
    split : str
        A split folder's name; ``"train"`` (the whole tree) when there are none.
    image_size : int or (int, int), optional
        Resize every image to this (height, width). Without it all images must share a size
        (in memory) or are resized to 224×224 (lazy).
    lazy : bool, optional
        ``True``: inputs are :class:`~nmtune.data.lazy.LazyImages`, decoded when indexed
        (always RGB; each image resized to cover ``image_size`` and centre-cropped).
        ``False``: decode everything now. ``None`` (default): lazy when the decoded split
        would exceed :data:`~nmtune.data.lazy.AUTO_LAZY_BYTES` (2 GiB).

    Returns
    -------
    Dataset
        In memory: grayscale (C=1) when every image is grayscale, else RGB (C=3). Classes are
        the sorted class-folder names across all splits, so splits share one label coding.
    """
    from PIL import Image

    from .lazy import load_lazy_folder, prefers_lazy

    files, classes = image_folder_files(root)
    if split not in files:
        raise NMTuneError(f"{root} has no split {split!r}; it has {sorted(files)}")
    if lazy is None:
        lazy = prefers_lazy([path for path, _ in files[split]], image_size)
    if lazy:
        return load_lazy_folder(root, split, files[split], classes, image_size)
    images = [Image.open(path) for path, _ in files[split]]
    colour = any(im.mode not in ("1", "L", "I", "I;16", "F") for im in images)
    arrays = [_decode(im, "RGB" if colour else "L", image_size) for im in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise NMTuneError(
            f"{root}: images have different sizes {sorted(shapes)[:3]}; pass image_size=... "
            "to resize them to one"
        )
    inputs = np.stack(arrays).astype(np.float32) / np.float32(255)
    if not colour:
        inputs = inputs[:, None]
    else:
        inputs = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2))
    labels = np.asarray([label for _, label in files[split]], dtype=np.int64)
    return _dataset(f"folder:{root}", split, inputs, labels, classes)


def image_folder_files(root: str | os.PathLike) -> tuple[dict[str, list], tuple[str, ...]]:
    """``({split: [(path, label), ...]}, classes)`` of an ImageFolder tree, sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NMTuneError(f"image folder not found: {root}")
    split_dirs = {d.name: d for d in root.iterdir() if d.is_dir() and d.name in SPLIT_DIR_NAMES}
    trees = split_dirs or {"train": root}
    classes = tuple(
        sorted({c.name for tree in trees.values() for c in tree.iterdir() if c.is_dir()})
    )
    if not classes:
        raise NMTuneError(f"{root} has no class folders (expected {root}/CLASS/IMAGE.png)")
    files = {}
    for split, tree in sorted(trees.items()):
        files[split] = [
            (path, label)
            for label, name in enumerate(classes)
            if (tree / name).is_dir()
            for path in sorted((tree / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not files[split]:
            raise NMTuneError(f"{tree} holds no {'/'.join(IMAGE_SUFFIXES)} images in class folders")
    return files, classes


def _decode(image, mode: str, image_size) -> np.ndarray:
    image = image.convert(mode)
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        image = image.resize((w, h), resample=3)  # bicubic, antialiased when shrinking
    return np.asarray(image, dtype=np.uint8)


register_file_source(
    "folder",
    load_image_folder,
    splits=lambda path: list(image_folder_files(path)[0]),
    description="user image folder",
)


# --------------------------------------------------------------------------- text tables


def load_text_table(path: str | os.PathLike, split: str = "train") -> Dataset:
    """A CSV or JSON-lines file with columns ``text`` and ``label`` (and optionally ``split``).

    Labels may be strings or integers; classes are their sorted unique values over the whole
    file, so every split shares one label coding. Without a ``split`` column the rows are
    split 80/20 into ``train``/``test``, stratified, with a fixed seed.
    """
    splits = text_table_splits(path)
    if split not in splits:
        raise NMTuneError(f"{path} has no split {split!r}; it has {sorted(splits)}")
    indices, table = splits[split], _read_table(path)
    codes, classes = _encode_labels(table["label"].to_numpy(), f"{path}: label")
    texts = table["text"].tolist()
    return _dataset(
        f"{_table_kind(path)}:{path}", split, [texts[i] for i in indices], codes[indices], classes
    )


def text_table_splits(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Row indices of each split of a text table (see :func:`load_text_table`)."""
    table = _read_table(path)
    if "split" in table.columns:
        names = table["split"].astype(str).to_numpy()
        return {s: np.flatnonzero(names == s) for s in sorted(set(names))}
    codes, _ = _encode_labels(table["label"].to_numpy(), f"{path}: label")
    parts = _stratified_split(np.arange(len(codes)), codes, test_size=0.2)
    return {s: idx for s, (idx, _) in parts.items()}


@functools.lru_cache(maxsize=8)
def _read_table_cached(path: str, mtime_ns: int, size: int):
    import pandas as pd

    try:
        if _table_kind(path) == "jsonl":
            table = pd.read_json(path, lines=True, dtype=False)
        else:
            table = pd.read_csv(path, dtype={"text": str}, keep_default_na=False, na_values=[""])
    except ValueError as exc:
        raise NMTuneError(f"{path} could not be parsed: {exc}") from None
    missing = {"text", "label"} - set(table.columns)
    if missing:
        raise NMTuneError(
            f"{path} lacks column(s) {sorted(missing)}; a text table needs 'text' and 'label' "
            f"(and optionally 'split'); it has {list(table.columns)}"
        )
    bad = table["text"].isna() | table["label"].isna()
    if bad.any():
        raise NMTuneError(f"{path}: {int(bad.sum())} row(s) have an empty text or label")
    table["text"] = table["text"].astype(str)
    return table


def _read_table(path: str | os.PathLike):
    # Keyed on size and mtime so an edited file is re-read while repeated loads are free.
    path = Path(path).expanduser()
    if not path.is_file():
        raise NMTuneError(f"text table not found: {path}")
    stat = path.stat()
    return _read_table_cached(str(path), stat.st_mtime_ns, stat.st_size)


def _table_kind(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    raise NMTuneError(f"{path}: expected a .csv or .jsonl file, got suffix {suffix!r}")


for _kind in ("csv", "jsonl"):
    register_file_source(
        _kind,
        load_text_table,
        splits=lambda path: list(text_table_splits(path)),
        description=f"user {_kind} text table",
    )


# --------------------------------------------------------------------------- arrays


def from_arrays(
    inputs,
    labels,
    name: str = "arrays",
    *,
    split: str = "train",
    classes: tuple[str, ...] | None = None,
) -> Dataset:
    """A dataset from memory: images (N×H×W, N×C×H×W or N×H×W×C with C in {1, 3}) or texts.

    Parameters
    ----------
    inputs : ndarray or list of str
        Images as uint8 (0..255) or floats in [0, 1]; or a list of N strings.
    labels : array-like of shape (N,)
        Class labels of any sortable type, or integer codes into ``classes``.
    name, split : str
    classes : tuple of str, optional
        Names for integer ``labels`` ``0..K-1``. Without it the classes are the sorted unique
        labels.
    """
    raw = as_label_array(labels)
    check_same_length(len(inputs), len(raw))
    if classes is None:
        codes, classes = _encode_labels(raw, "labels")
    else:
        classes = tuple(str(c) for c in classes)
        codes = raw.astype(np.int64)
        if (
            not np.issubdtype(raw.dtype, np.integer)
            or codes.min() < 0
            or codes.max() >= len(classes)
        ):
            raise NMTuneError(f"with classes given, labels must be integers in [0, {len(classes)})")
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "US":
        inputs = inputs.tolist()
    if isinstance(inputs, list | tuple) and all(isinstance(t, str) for t in inputs):
        return _dataset(name, split, list(inputs), codes, classes)
    return _dataset(name, split, _as_image_batch(inputs), codes, classes)


def _as_image_batch(inputs) -> np.ndarray:
    """N×C×H×W float32 in [0, 1] from the layouts :func:`from_arrays` accepts."""
    is_uint8 = getattr(inputs, "dtype", None) == np.uint8
    x = as_float_array(inputs, "inputs", ndim=(3, 4))
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise NMTuneError(f"images must have 1 or 3 channels (N×C×H×W), got shape {x.shape}")
    if is_uint8:
        x = x / 255.0
    elif x.min() < 0 or x.max() > 1:
        raise NMTuneError(
            f"float images must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]; "
            "divide by 255 (or pass uint8)"
        )
    return np.ascontiguousarray(x, dtype=np.float32)
