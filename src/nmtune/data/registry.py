"""The dataset registry: cards, loading by name, shifted names and file-based names.

Each source registers itself in its own module: the packaged datasets in :mod:`.sources`
(:func:`register_dataset`), the user formats ``folder:``, ``csv:`` and ``jsonl:`` in
:mod:`.files` (:func:`register_file_source`). Each shift in :mod:`.shifts` states its own
effect on an image's shape. This module imports no source and no torch, so a card costs no
data load.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._validation import NMTuneError, check_seed, check_str
from .base import Dataset
from .shifts import apply_shift, is_shift, parse_shift

__all__ = [
    "DatasetCard",
    "dataset_card",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "register_file_source",
    "require_dataset",
    "unregister_dataset",
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


@dataclass(frozen=True)
class _FileSource:
    loader: Callable[..., Dataset]
    splits: Callable[[str], list[str]]
    description: str


_REGISTRY: dict[str, _Entry] = {}
_FILE_SOURCES: dict[str, _FileSource] = {}


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


def unregister_dataset(name: str) -> DatasetCard:
    """Remove the registered dataset ``name`` and return its card.

    For code that registers a dataset for a while, such as a test fixture.
    """
    if name not in _REGISTRY:
        raise NMTuneError(f"dataset {name!r} is not registered")
    return _REGISTRY.pop(name).card


def register_file_source(
    prefix: str,
    loader: Callable[..., Dataset],
    *,
    splits: Callable[[str], list[str]],
    description: str,
) -> None:
    """Accept dataset names ``PREFIX:PATH``, read from the user's files.

    Parameters
    ----------
    prefix : str
        The scheme before the colon (``"folder"``, ``"csv"``).
    loader : callable
        ``loader(path, split, **options) -> Dataset``.
    splits : callable
        ``splits(path) -> [split, ...]``: the split names the files at ``path`` hold.
    description : str
        The card's description of such a dataset.
    """
    if prefix in _FILE_SOURCES:
        raise NMTuneError(f"file source {prefix!r} is already registered")
    _FILE_SOURCES[prefix] = _FileSource(loader, splits, description)


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
        by ``~SHIFT`` parts (see :mod:`nmtune.data`).
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
    check_seed(seed)
    base, shift_specs = _parse(name)
    dataset = _load_base(base, split, options).subset(limit, seed)
    for spec in shift_specs:
        dataset = apply_shift(dataset, spec, seed)
    return dataset


# --------------------------------------------------------------------------- internals


def _parse(name: str) -> tuple[str, list[str]]:
    """Split ``name`` into its base and shift specs, checking both."""
    check_str(name, "dataset name")
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
        load = functools.partial(_FILE_SOURCES[prefix].loader, path)
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
    source = _FILE_SOURCES[prefix]
    datasets = {s: source.loader(path, s) for s in source.splits(path)}
    first = next(iter(datasets.values()))
    return DatasetCard(
        name=base,
        description=source.description,
        modality=first.modality,
        classes=first.classes,
        splits={s: len(d) for s, d in datasets.items()},
        input_shape=tuple(first.inputs.shape[1:]) if first.modality == "image" else None,
        source=path,
        licence="the user's",
    )


def _shifted_card(card: DatasetCard, specs: list[str]) -> DatasetCard:
    """The card of ``card``'s dataset under the shifts ``specs``: each states its own effect."""
    if card.modality != "image":
        raise NMTuneError(f"shifts apply to image datasets; {card.name} is {card.modality}")
    shape = card.input_shape
    for spec in specs:
        shape = parse_shift(spec)[0].output_shape(shape)
    return dataclasses.replace(
        card,
        name=f"{card.name}~{'~'.join(specs)}",
        description=f"{card.description}; shifted: {', '.join(specs)}",
        input_shape=shape,
    )
