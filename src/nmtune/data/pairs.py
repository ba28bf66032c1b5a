"""Image–text pairs in the layouts CLIP trainers read, streamed rather than loaded whole.

Two on-disk layouts, each with a reader and a writer:

- **open_clip CSV/TSV**: one row per pair with an image path column (``filepath``) and a
  caption column (``title``); column names and separator configurable. Relative paths are
  resolved against the CSV's own folder.
- **WebDataset tar shards**: members ``KEY.jpg`` / ``KEY.png`` / ... and ``KEY.txt`` next to
  each other; a shard list is a brace pattern such as ``shards/train-{000..009}.tar``
  (several patterns joined by ``::``). Shards are read with :mod:`tarfile` in streaming mode.

A pair is a :class:`Pair`: its key, the encoded image bytes, their format and the caption.
Both writers are atomic per file, so a killed export leaves complete files or none.

:func:`synthetic_pairs` is the offline default: pairs made from a registered image set with
captions *generated* from its class names and attributes measured from each image's pixels.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import atomic_path, write_bytes_atomic
from .._validation import NMTuneError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Pair",
    "PairSet",
    "expand_shards",
    "image_attributes",
    "noun_phrase",
    "open_pairs",
    "read_csv",
    "read_shards",
    "synthetic_pairs",
    "write_csv",
    "write_shards",
]

#: Image member extensions recognised in shards, in WebDataset's spelling.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
_CAPTION_EXTENSION = "txt"


@dataclass(frozen=True)
class Pair:
    """One image–text pair.

    Attributes
    ----------
    key : str
        Sample name (WebDataset key; the image file's stem in a CSV).
    image : bytes
        The encoded image file.
    ext : str
        Its format, lower case without the dot (``"png"``, ``"jpg"``).
    caption : str
    """

    key: str
    image: bytes
    ext: str
    caption: str

    def decode(self) -> np.ndarray:
        """The image as float32 (C, H, W) in [0, 1] (grey images keep one channel)."""
        from PIL import Image

        with Image.open(io.BytesIO(self.image)) as opened:
            opened.load()
            image = opened if opened.mode in ("L", "RGB") else opened.convert("RGB")
            array = np.asarray(image, dtype=np.float32) / 255.0
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


# --------------------------------------------------------------------------- shard patterns

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shards(pattern: str) -> list[str]:
    """Expand WebDataset/bash braces: ``a-{00..02}.tar`` -> ``a-00.tar a-01.tar a-02.tar``.

    ``{x,y}`` lists alternatives; ``{lo..hi}`` a numeric range, zero-padded to ``lo``'s width;
    several braces give their product; ``::`` joins several patterns.
    """
    out = []
    for part in pattern.split("::"):
        pieces = _BRACE.split(part)  # literal, brace, literal, brace, ..., literal
        choices = [
            [piece] if i % 2 == 0 else _brace_choices(piece) for i, piece in enumerate(pieces)
        ]
        out.extend("".join(combo) for combo in itertools.product(*choices))
    return out


def _brace_choices(body: str) -> list[str]:
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        if int(hi) < int(lo):
            raise NMTuneError(f"shard range {{{body}}} runs backwards")
        return [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    if "," in body:
        return body.split(",")
    raise NMTuneError(f"cannot expand {{{body}}}: use {{000..009}} or {{a,b}}")


# --------------------------------------------------------------------------- WebDataset shards


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return name, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def read_shards(urls: str | Iterable[str]) -> Iterator[Pair]:
    """Stream the pairs of WebDataset tar shards, in order.

    Parameters
    ----------
    urls : str or iterable of str
        A brace pattern (see :func:`expand_shards`) or a list of shard paths.

    Yields
    ------
    Pair
        Members other than the image and ``.txt`` (``.json``, ``.cls``...) are ignored.
    """
    paths = expand_shards(urls) if isinstance(urls, str) else list(urls)
    if not paths:
        raise NMTuneError("no shards given")
    for path in paths:
        if not os.path.isfile(path):
            raise NMTuneError(f"shard not found: {path}")
        yield from _read_shard(path)


def _read_shard(path: str) -> Iterator[Pair]:
    key, fields = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: one pass, no index
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = _split_member(member.name)
                if member_key != key:
                    if key is not None:
                        yield _pair_from_fields(path, key, fields)
                    key, fields = member_key, {}
                fields[ext] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise NMTuneError(f"{path} is not a readable tar shard: {exc}") from None
    if key is not None:
        yield _pair_from_fields(path, key, fields)


def _pair_from_fields(path: str, key: str, fields: dict[str, bytes]) -> Pair:
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in fields), None)
    if image_ext is None or _CAPTION_EXTENSION not in fields:
        raise NMTuneError(
            f"{path}: sample {key!r} has {sorted(fields)}; a pair needs an image "
            f"({'/'.join(IMAGE_EXTENSIONS)}) and a .txt caption"
        )
    caption = fields[_CAPTION_EXTENSION].decode("utf-8").strip()
    return Pair(key=key, image=fields[image_ext], ext=image_ext, caption=caption)


def write_shards(
    pairs: Iterable[Pair], folder: str | os.PathLike, prefix: str = "shard", per_shard: int = 1000
) -> str:
    """Write ``pairs`` as WebDataset shards ``folder/prefix-000000.tar``, ...; return the pattern.

    Each shard is written atomically; members carry fixed metadata (mtime 0, mode 0644) so
    equal pairs give byte-identical shards.

    Returns
    -------
    pattern : str
        ``folder/prefix-{000000..00000K}.tar``, which :func:`read_shards` and open_clip's
        ``--train-data`` accept.
    """
    if per_shard < 1:
        raise NMTuneError(f"per_shard must be >= 1, got {per_shard}")
    folder = Path(folder)
    count = 0
    for count, batch in enumerate(_batches(pairs, per_shard), start=1):
        with atomic_path(folder / f"{prefix}-{count - 1:06d}.tar") as tmp:
            with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for pair in batch:
                    _check_key(pair.key)
                    _add_member(tar, f"{pair.key}.{pair.ext}", pair.image)
                    _add_member(tar, f"{pair.key}.{_CAPTION_EXTENSION}", pair.caption.encode())
    if count == 0:
        raise NMTuneError("no pairs to write")
    return str(folder / f"{prefix}-{{{0:06d}..{count - 1:06d}}}.tar")


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _check_key(key: str) -> None:
    # A dot would move WebDataset's key/extension split; a slash would leave the folder.
    if not key or "." in key or "/" in key or "\\" in key:
        raise NMTuneError(f"pair key {key!r} must be non-empty, without '.', '/' or '\\'")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


# --------------------------------------------------------------------------- open_clip CSV


def _separator(path: Path, sep: str | None) -> str:
    if sep is not None:
        return sep
    return "\t" if path.suffix.lower() == ".tsv" else ","


def read_csv(
    path: str | os.PathLike,
    img_key: str = "filepath",
    caption_key: str = "title",
    sep: str | None = None,
) -> Iterator[Pair]:
    """Stream the pairs of an open_clip CSV/TSV (``--csv-img-key``, ``--csv-caption-key``).

    Parameters
    ----------
    path : path
        The table; image paths in it are resolved against its folder when relative.
    img_key, caption_key : str
        Column names (open_clip's defaults).
    sep : str, optional
        Column separator; tab for ``.tsv`` files and comma otherwise when omitted.
    """
    path = Path(path)
    if not path.is_file():
        raise NMTuneError(f"pair table not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=_separator(path, sep))
        missing = [k for k in (img_key, caption_key) if k not in (reader.fieldnames or [])]
        if missing:
            raise NMTuneError(
                f"{path} lacks column(s) {missing}; it has {reader.fieldnames} "
                f"(choose them with img_key= / caption_key=)"
            )
        for line, row in enumerate(reader, start=2):
            image_path = path.parent / row[img_key]
            try:
                data = image_path.read_bytes()
            except OSError as exc:
                raise NMTuneError(f"{path}:{line}: cannot read image {image_path}: {exc}") from None
            key, _, ext = image_path.name.rpartition(".")
            yield Pair(key=key, image=data, ext=ext.lower(), caption=row[caption_key])


def write_csv(
    pairs: Iterable[Pair],
    path: str | os.PathLike,
    img_key: str = "filepath",
    caption_key: str = "title",
    sep: str | None = None,
    image_dir: str = "images",
) -> Path:
    """Write ``pairs`` as an open_clip table ``path`` with images in ``path.parent/image_dir``.

    Images are written (atomically) first and the table last, so a table on disk always
    refers to complete images. Paths in the table are relative to its folder.
    """
    path = Path(path)
    rows = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, delimiter=_separator(path, sep))
            writer.writerow([img_key, caption_key])
            for pair in pairs:
                _check_key(pair.key)
                relative = f"{image_dir}/{pair.key}.{pair.ext}"
                write_bytes_atomic(path.parent / relative, pair.image)
                writer.writerow([relative, pair.caption])
                rows += 1
        if rows == 0:
            raise NMTuneError("no pairs to write")
    return path


def open_pairs(source: str | os.PathLike, **csv_options) -> Iterator[Pair]:
    """Pairs from a CSV/TSV table (``.csv``/``.tsv``) or WebDataset shards (``.tar`` pattern)."""
    text = str(source)
    if text.lower().endswith((".csv", ".tsv")):
        return read_csv(text, **csv_options)
    if text.lower().endswith(".tar"):
        return read_shards(text)
    raise NMTuneError(f"pair source {text!r} must end in .csv, .tsv or .tar (a shard pattern)")


# --------------------------------------------------------------------------- synthetic default

#: What :func:`synthetic_pairs` data is, for its card and any report that uses it.
SYNTHETIC_CARD = (
    "Synthetic image-text pairs: the images are a registered image set ({base}, {split} "
    "split); the captions are NOT human-written. Each is generated from the image's class "
    "name through one of {templates} templates, filled with attributes measured from the "
    "pixels (stroke thickness, ink brightness, width, slant; each bucketed by terciles "
    "of this split). They stand in for web captions on a laptop without network; results "
    "on them say nothing about natural captions."
)

#: Caption templates; fields: noun phrase, thickness, brightness, width, slant.
SYNTHETIC_TEMPLATES = (
    "a photo of a {noun}.",
    "a {thick} {noun}.",
    "a {width} {noun}, {slant}.",
    "a {bright} {noun} drawn with {thick} strokes.",
    "{noun}, {width} and {bright}, {slant}.",
    "a {width} {thick} {noun} in the picture.",
    "an image of a {bright} {noun}.",
    "a {noun} {slant}, {thick}.",
)

_ATTRIBUTE_WORDS = {
    "thick": ("thin", "medium-weight", "thick"),
    "bright": ("faint", "grey", "bright"),
    "width": ("narrow", "medium-width", "wide"),
    "slant": ("leaning left", "upright", "leaning right"),
}


@dataclass(frozen=True)
class PairSet:
    """Image–text pairs held in memory (see :func:`synthetic_pairs`).

    Attributes
    ----------
    images : ndarray of shape (N, C, H, W), float32 in [0, 1]
    captions : list of str, length N
    labels : ndarray of shape (N,), int64
        The source image set's class of each pair (for zero-shot and linear evaluation).
    classes : tuple of str
    card : str
        Plain statement of what the data is.
    """

    images: np.ndarray
    captions: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    card: str

    def __len__(self) -> int:
        return len(self.captions)

    def swap_captions(self, rate: float, seed: int = 0) -> tuple[PairSet, np.ndarray]:
        """This set with caption-swap noise (:func:`nmtune.noise.caption_swap`) and its mask.

        The card records the realised rate, so an exported copy says how noisy it is.
        """
        from ..noise import caption_swap

        noisy, changed = caption_swap(self.captions, rate, seed)
        card = f"{self.card} Caption-swap noise: {changed.mean():.4f} of the pairs (seed {seed})."
        return PairSet(self.images, noisy, self.labels, self.classes, card), changed

    def pairs(self) -> Iterator[Pair]:
        """The pairs as PNG-encoded :class:`Pair` objects, keys ``00000000``, ``00000001``..."""
        from PIL import Image

        for i, caption in enumerate(self.captions):
            pixels = np.rint(self.images[i] * 255).astype(np.uint8)
            image = Image.fromarray(
                pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
            )
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            yield Pair(key=f"{i:08d}", image=buffer.getvalue(), ext="png", caption=caption)


def synthetic_pairs(
    base: str = "mnist", split: str = "train", limit: int | None = None, seed: int = 0
) -> PairSet:
    """Offline image–text pairs: a registered image set with generated captions.

    No package in the offline lists ships small real captioned images, so this stands in for
    web pairs; its ``card`` says plainly that the captions are generated.

    Parameters
    ----------
    base : str
        A registered image data set (``"mnist"``, ``"fashion-mnist"``, ``"digits"``...).
    split : str
    limit : int, optional
        A seeded class-stratified subset of this many images.
    seed : int
        Seeds the subset and the template each caption uses.
    """
    from . import load_dataset

    data = load_dataset(base, split, limit=limit, seed=seed)
    if data.modality != "image":
        raise NMTuneError(f"synthetic pairs need an image data set, {base!r} holds {data.modality}")
    images = np.asarray(data.inputs[:], dtype=np.float32)
    words = _attribute_words(images)
    nouns = [noun_phrase(name) for name in data.classes]
    choice = np.random.default_rng(seed).integers(len(SYNTHETIC_TEMPLATES), size=len(images))
    captions = [
        SYNTHETIC_TEMPLATES[t].format(noun=nouns[y], **{k: v[i] for k, v in words.items()})
        for i, (t, y) in enumerate(zip(choice, data.labels, strict=True))
    ]
    card = SYNTHETIC_CARD.format(base=base, split=split, templates=len(SYNTHETIC_TEMPLATES))
    return PairSet(images, captions, data.labels, data.classes, card)


def noun_phrase(class_name: str) -> str:
    """How generated captions name a class: digit classes as "handwritten digit 3"."""
    return f"handwritten digit {class_name}" if class_name.isdigit() else class_name.lower()


def image_attributes(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image measurements of ``images`` (N, C, H, W) in [0, 1], light ink on dark ground.

    Returns
    -------
    dict of str to ndarray of shape (N,)
        ``thick``: ink area over half its boundary length (≈ stroke width in pixels);
        ``bright``: mean intensity of the ink; ``width``: bounding-box width over image
        width; ``slant``: horizontal shift of the ink per pixel of height (positive leans
        right).
    """
    ink = images.mean(axis=1)
    mask = ink > 0.5 * ink.max(axis=(1, 2), keepdims=True).clip(min=1e-6)
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    interior = (
        padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )
    area = mask.sum(axis=(1, 2)).clip(min=1)
    boundary = (mask & ~interior).sum(axis=(1, 2)).clip(min=1)
    h, w = mask.shape[1:]
    cols = mask.any(axis=1)
    left, right = cols.argmax(axis=1), w - 1 - cols[:, ::-1].argmax(axis=1)
    weights = ink * mask
    total = weights.sum(axis=(1, 2)).clip(min=1e-6)
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float64)
    mean_x = (weights * grid_x).sum(axis=(1, 2)) / total
    mean_y = (weights * grid_y).sum(axis=(1, 2)) / total
    dx, dy = grid_x - mean_x[:, None, None], grid_y - mean_y[:, None, None]
    cov_xy = (weights * dx * dy).sum(axis=(1, 2)) / total
    var_y = (weights * dy * dy).sum(axis=(1, 2)) / total
    return {
        "thick": 2.0 * area / boundary,
        "bright": weights.sum(axis=(1, 2)) / area,
        "width": (right - left + 1) * cols.any(axis=1) / w,
        # Rows grow downwards, so ink drifting right as it rises is a negative covariance.
        "slant": -cov_xy / var_y.clip(min=1e-6),
    }


def _attribute_words(images: np.ndarray) -> dict[str, list[str]]:
    """Each attribute as a word, by which tercile of this set the image falls in."""
    measured = image_attributes(images)
    words = {}
    for name, vocabulary in _ATTRIBUTE_WORDS.items():
        cuts = np.quantile(measured[name], [1 / 3, 2 / 3])
        words[name] = [vocabulary[k] for k in np.searchsorted(cuts, measured[name])]
    return words
