"""Batched feature extraction with a content-addressed, resumable, verified on-disk cache.

``extract(backbone, dataset)`` returns the features of every row (``N×D``), or of ``V``
augmented views (``V×N×D``) for NMTune's cross-view consistency term.

Cache layout (one directory per key under ``cache_dir``)::

    <key>/shard-00000.npy   V×rows×D, written atomically, every ``shard_rows`` rows
    <key>/progress.json     sha256 of each finished shard (rewritten after each one)
    <key>/features.npy      the consolidated array, once every shard is done
    <key>/manifest.json     its sha256, shape and metadata -- written last

The key is the sha256 of everything that changes the result: the backbone's identity (its
weights hash included), the dataset fingerprint, the number of views, the augmentation and its
seed, the stored dtype, the cache format version and the nmtune version. An interrupted run
resumes from its finished shards; a shard or final file whose sha256 does not match is
reported with a :class:`CacheWarning` and recomputed; a hit is read memory-mapped. A cache
that cannot be written (a file where its directory should be, no permission, a full disk) is
reported with a :class:`CacheWarning` and the features are extracted without it.

Augmentation is seeded per (seed, view, row), so results do not depend on ``batch_size``,
on the shard size or on which shards a resumed run recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from ._hashing import callable_identity, json_digest, sha256_file
from ._io import atomic_path, save_feature_file, write_json_atomic
from ._torch import resolve_device, tune_cpu_allocator
from ._validation import NMTuneError, check_int
from .augment import ImageAugment, WordDropout, row_seeds
from .backbones.base import Backbone
from .data.base import Dataset

#: Bump when the cache layout or the stored content changes meaning.
FEATURE_FORMAT_VERSION = 1
#: Rows per shard: a resumed run loses at most this many rows of work.
DEFAULT_SHARD_ROWS = 8192
_DTYPES = ("float32", "float16")


class CacheWarning(UserWarning):
    """A cache entry was corrupted or tampered with and is being rebuilt, or the cache cannot be
    written and features are extracted without it."""


class _CacheUnusable(Exception):
    """Reading or writing the cache entry failed; carries the OSError's message."""


@contextlib.contextmanager
def _cache_io():
    """Turn the OSError of a cache operation into :class:`_CacheUnusable`, so that a backbone's
    own OSError (a black-box client's ConnectionError, say) is never mistaken for it."""
    try:
        yield
    except OSError as exc:
        raise _CacheUnusable(str(exc)) from exc


@dataclass
class FeatureSet:
    """Extracted features with their labels and provenance.

    Attributes
    ----------
    features : ndarray of shape (N, D), or (V, N, D) for ``views > 1``
        Read-only and memory-mapped when served from the cache.
    labels : ndarray of shape (N,)
    meta : dict
        Backbone identity, dataset name/split/fingerprint, views, augmentation, seed, dtype,
        cache key and status (``"hit"``, ``"miss"``, ``"resumed"``, ``"off"``), timings.
    """

    features: np.ndarray
    labels: np.ndarray
    meta: dict

    @property
    def n_views(self) -> int:
        return 1 if self.features.ndim == 2 else self.features.shape[0]

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.npz`` feature file that ``nmtune tune`` and ``nmtune analyze`` read."""
        save_feature_file(path, np.asarray(self.features), self.labels, self.meta)


# -- augmentation --------------------------------------------------------------------------


def resolve_augment(augment, modality: str, views: int) -> tuple[Callable | None, str]:
    """The augmentation to apply and its identity for the cache key (none for one view)."""
    if views == 1:
        return None, "none"
    if augment is None:
        raise NMTuneError(
            f"views={views} needs an augmentation; pass augment='default' or a callable"
        )
    if isinstance(augment, str):
        if augment != "default":
            raise NMTuneError(f"augment must be 'default', None or a callable, got {augment!r}")
        augment = ImageAugment() if modality == "image" else WordDropout()
    if not callable(augment):
        raise NMTuneError(f"augment must be 'default', None or a callable, got {augment!r}")
    return augment, callable_identity(augment)


# -- cache key and entries ------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$NMTUNE_CACHE``, else ``~/.cache/nmtune/features``."""
    env = os.environ.get("NMTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nmtune" / "features"


def cache_key(
    backbone: Backbone, dataset: Dataset, views: int, augment_id: str, seed: int, dtype: str,
    clean_view: bool = False,
) -> tuple[str, dict]:
    """The cache key (hex sha256) and the JSON payload it hashes.

    The seed only enters with ``views > 1``: clean single-view features do not depend on it.
    ``clean_view`` is a field of its own (present only when true, so other keys are as they
    were): an augmentation's identity is the user's string, and could spell a clean one.
    """
    payload = {
        "format": FEATURE_FORMAT_VERSION,
        "nmtune": __version__,  # preprocessing code may change between releases
        "backbone": backbone.identity(),
        "dataset": [dataset.name, dataset.split, dataset.fingerprint, len(dataset)],
        "views": views,
        "augment": augment_id,
        "seed": seed if views > 1 else None,
        "dtype": dtype,
    }
    if clean_view:
        payload["clean_view"] = True
    return json_digest(payload), payload


class _Entry:
    """One cache directory: shards, progress, the consolidated array and its manifest."""

    def __init__(self, root: Path, key: str):
        self.dir = root / key
        self.key = key
        self.manifest = self.dir / "manifest.json"
        self.progress = self.dir / "progress.json"
        self.final = self.dir / "features.npy"

    def shard(self, index: int) -> Path:
        return self.dir / f"shard-{index:05d}.npy"

    def _warn(self, what: str) -> None:
        warnings.warn(
            f"feature cache {self.dir}: {what}; rebuilding it", CacheWarning, stacklevel=4
        )

    def _read_json(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            self._warn(f"{path.name} is unreadable")
            return None
        if not isinstance(data, dict) or data.get("key") != self.key:
            self._warn(f"{path.name} belongs to another key")
            return None
        return data

    def load(self) -> tuple[np.ndarray, dict] | None:
        """The consolidated features (memory-mapped) and manifest, if present and intact."""
        manifest = self._read_json(self.manifest)
        if manifest is None:
            return None
        if not self.final.is_file() or sha256_file(self.final) != manifest.get("sha256"):
            self._warn("features.npy is missing or its sha256 does not match the manifest")
            with contextlib.suppress(OSError):  # a read-only cache: the rebuild falls back
                self.manifest.unlink(missing_ok=True)
            return None
        features = np.load(self.final, mmap_mode="r")
        return features, manifest

    def check_writable(self) -> None:
        """Raise OSError now, before any extraction work, if this entry cannot be written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=self.dir, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)

    def finished_shards(self, layout: dict) -> dict[int, str]:
        """Shards recorded as done for this ``layout`` whose files still match their sha256."""
        progress = self._read_json(self.progress)
        if progress is None or progress.get("layout") != layout:
            return {}
        done = {}
        for index, digest in progress.get("shards", {}).items():
            path = self.shard(int(index))
            if path.is_file() and sha256_file(path) == digest:
                done[int(index)] = digest
            else:
                self._warn(f"{path.name} is missing or its sha256 does not match")
        return done

    def write_shard(self, index: int, block: np.ndarray, done: dict, layout: dict) -> None:
        with atomic_path(self.shard(index)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, block)
            done[index] = sha256_file(tmp)
        write_json_atomic(
            self.progress,
            {"key": self.key, "layout": layout, "shards": {str(i): d for i, d in done.items()}},
        )

    def consolidate(self, n_shards: int, shape: tuple, dtype: str, manifest: dict) -> np.ndarray:
        """Concatenate the shards into ``features.npy``, write the manifest, drop the shards."""
        with atomic_path(self.final) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            target = out if len(shape) == 3 else out[None]
            row = 0
            for index in range(n_shards):
                block = np.load(self.shard(index), mmap_mode="r")
                target[:, row : row + block.shape[1]] = block
                row += block.shape[1]
            out.flush()
            del out, target
            digest = sha256_file(tmp)
        write_json_atomic(self.manifest, {**manifest, "key": self.key, "sha256": digest})
        for shard in self.dir.glob("shard-*.npy"):  # stale ones of another shard size too
            shard.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)
        return np.load(self.final, mmap_mode="r")


# -- extraction -----------------------------------------------------------------------------


class _Embedder:
    """Runs the backbone over row ranges of one dataset, for every view, with validation."""

    def __init__(self, backbone, dataset, views, augment, seed, batch_size, dtype, bar,
                 clean_view=False):
        self.backbone, self.dataset, self.views = backbone, dataset, views
        self.augment, self.seed, self.batch_size = augment, seed, batch_size
        self.clean_view = clean_view
        self.dtype, self.bar = dtype, bar
        self.dim = backbone.feature_dim
        self.embed_seconds = 0.0

    def block(self, start: int, stop: int) -> np.ndarray:
        """Features of rows ``start..stop-1``: (V, stop - start, D)."""
        out = None
        for view in range(self.views):
            for lo in range(start, stop, self.batch_size):
                hi = min(lo + self.batch_size, stop)
                feats = self._batch(view, lo, hi)
                if out is None:
                    out = np.empty((self.views, stop - start, self.dim), dtype=self.dtype)
                out[view, lo - start : hi - start] = feats
                self.bar.update(hi - lo)
        return out

    def _batch(self, view: int, lo: int, hi: int) -> np.ndarray:
        inputs = self.dataset.inputs[lo:hi]
        if self.augment is not None and not (self.clean_view and view == 0):
            inputs = self.augment(inputs, row_seeds(self.seed, view, lo, hi))
        tick = time.perf_counter()
        feats = np.asarray(self.backbone.embed(inputs))
        self.embed_seconds += time.perf_counter() - tick
        if self.dim is None:
            self.dim = feats.shape[-1] if feats.ndim == 2 else None
        if feats.shape != (hi - lo, self.dim):
            raise NMTuneError(
                f"{self.backbone.name} returned features of shape {feats.shape} for rows "
                f"{lo}..{hi - 1}; expected ({hi - lo}, {self.dim})"
            )
        if not np.isfinite(feats).all():
            raise NMTuneError(
                f"{self.backbone.name} returned NaN or infinite features for rows {lo}..{hi - 1}"
            )
        return feats


def extract(
    backbone: Backbone,
    dataset: Dataset,
    *,
    views: int = 1,
    augment: str | Callable | None = "default",
    clean_view: bool = False,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    cache_dir: str | os.PathLike | bool | None = None,
    dtype: str = "float32",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: bool = True,
) -> FeatureSet:
    """Features of every row of ``dataset`` through ``backbone``, from the cache when possible.

    Parameters
    ----------
    backbone : Backbone
    dataset : Dataset
        Its ``modality`` must match the backbone's.
    views : int
        1: clean features, shape (N, D). V > 1: V augmented views, shape (V, N, D).
    augment : "default", None or callable
        Used only when ``views > 1``. ``"default"``: :class:`ImageAugment` for images,
        :class:`WordDropout` for text. A callable takes ``(batch, seeds)`` with ``seeds`` a
        (B,) uint64 array of per-row seeds and returns the augmented batch; its ``identity``
        attribute (else its qualified name and code) enters the cache key -- give it one when
        it depends on state the code does not show.
    clean_view : bool
        With ``views > 1``: view 0 is the clean (un-augmented) input and views 1..V-1 are
        augmented. Tuners then train on the clean distribution they are evaluated on as well
        as on augmentations: on resnet20/MNIST, one clean and one augmented view gave NMTune
        5 points more than two augmented views (docs/benchmarks.md).
    seed : int
        Seeds the augmentation.
    batch_size : int
        Rows per ``backbone.embed`` call (memory only; results do not depend on it).
    device : str or torch.device
        ``"auto"`` uses CUDA when present.
    cache_dir : path, None or False
        ``None``: :func:`default_cache_dir`; ``False``: no cache.
    dtype : {"float32", "float16"}
        Storage dtype.
    shard_rows : int
        Rows per cache shard (the unit of resumption).
    progress : bool
        Show a progress bar when extraction takes more than a couple of seconds.

    Returns
    -------
    FeatureSet
    """
    views, batch_size, shard_rows = _check_arguments(
        backbone, dataset, views, batch_size, dtype, shard_rows
    )
    started = time.perf_counter()
    if not isinstance(clean_view, bool | np.bool_):
        raise NMTuneError(f"clean_view must be True or False, got {clean_view!r}")
    clean_view = bool(clean_view) and views > 1  # one view is clean anyway
    augment_fn, augment_id = resolve_augment(augment, dataset.modality, views)
    device = resolve_device(device)
    if device.type == "cpu":
        tune_cpu_allocator()
    backbone.to(device)
    key, payload = cache_key(backbone, dataset, views, augment_id, seed, dtype, clean_view)
    meta = {
        "backbone": backbone.name,
        "backbone_identity": payload["backbone"],
        "dataset": dataset.name,
        "split": dataset.split,
        "fingerprint": dataset.fingerprint,
        "n": len(dataset),
        "views": views,
        "augment": augment_id,
        "clean_view": clean_view,
        "seed": seed,
        "dtype": dtype,
        "cache_key": key,
        "format_version": FEATURE_FORMAT_VERSION,
    }
    entry = None if cache_dir is False else _Entry(Path(cache_dir or default_cache_dir()), key)
    if entry is not None and (hit := entry.load()) is not None:
        features, manifest = hit
        seconds = {
            "total": time.perf_counter() - started,
            "extraction": manifest.get("meta", {}).get("seconds"),  # of the run that filled it
        }
        return FeatureSet(features, dataset.labels, {**meta, "seconds": seconds, "cache": "hit"})

    from tqdm.auto import tqdm

    total = len(dataset) * views
    with tqdm(
        total=total, desc=f"extract {backbone.name}", unit="row", disable=not progress, delay=2.0
    ) as bar:
        embedder = _Embedder(backbone, dataset, views, augment_fn, seed, batch_size, dtype, bar,
                             clean_view)
        features, status = None, "off"
        if entry is not None:
            try:
                features, status = _extract_cached(entry, embedder, shard_rows, meta, started)
            except _CacheUnusable as exc:
                warnings.warn(
                    f"feature cache {entry.dir} cannot be used ({exc}); extracting without it",
                    CacheWarning,
                    stacklevel=2,
                )
                bar.reset()
        if features is None:
            features = _extract_uncached(embedder, shard_rows)
    if views == 1 and features.ndim == 3:
        features = features[0]
    elapsed = time.perf_counter() - started
    seconds = {"embed": embedder.embed_seconds, "total": elapsed}
    return FeatureSet(features, dataset.labels, {**meta, "seconds": seconds, "cache": status})


def _check_arguments(backbone, dataset, views, batch_size, dtype, shard_rows) -> list[int]:
    """Raise naming the first bad argument; return ``views``, ``batch_size``, ``shard_rows`` as
    ints (a numpy integer would otherwise enter the cache key as a string)."""
    if not isinstance(backbone, Backbone):
        raise NMTuneError(f"backbone must be a nmtune Backbone, got {type(backbone).__name__}")
    if not isinstance(dataset, Dataset):
        raise NMTuneError(f"dataset must be a nmtune Dataset, got {type(dataset).__name__}")
    if backbone.modality != dataset.modality:
        raise NMTuneError(
            f"backbone {backbone.name} takes {backbone.modality} inputs but dataset "
            f"{dataset.name} holds {dataset.modality}"
        )
    if len(dataset) == 0:
        raise NMTuneError(f"dataset {dataset.name}/{dataset.split} is empty")
    counts = [check_int(value, label, 1) for label, value in
              (("views", views), ("batch_size", batch_size), ("shard_rows", shard_rows))]
    if dtype not in _DTYPES:
        raise NMTuneError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return counts


def _extract_uncached(embedder: _Embedder, shard_rows: int) -> np.ndarray:
    n = len(embedder.dataset)
    out = None
    for start in range(0, n, shard_rows):
        block = embedder.block(start, min(start + shard_rows, n))
        if out is None:
            out = np.empty((embedder.views, n, block.shape[2]), dtype=embedder.dtype)
        out[:, start : start + block.shape[1]] = block
    return out


def _extract_cached(entry: _Entry, embedder: _Embedder, shard_rows: int, meta: dict, started):
    n = len(embedder.dataset)
    layout = {"n": n, "views": embedder.views, "dtype": embedder.dtype, "shard_rows": shard_rows}
    with _cache_io():
        entry.check_writable()
        done = entry.finished_shards(layout)
    resumed = bool(done)
    n_shards = -(-n // shard_rows)
    embedder.bar.update(sum(_rows(i, shard_rows, n) for i in done) * embedder.views)
    for index in range(n_shards):
        if index in done:
            continue
        start = index * shard_rows
        block = embedder.block(start, start + _rows(index, shard_rows, n))
        with _cache_io():
            entry.write_shard(index, block, done, layout)
    with _cache_io():
        dim = np.load(entry.shard(0), mmap_mode="r").shape[2]
        shape = (n, dim) if embedder.views == 1 else (embedder.views, n, dim)
        seconds = {"embed": embedder.embed_seconds, "total": time.perf_counter() - started}
        manifest = {"shape": list(shape), "dtype": embedder.dtype,
                    "meta": {**meta, "seconds": seconds}}
        features = entry.consolidate(n_shards, shape, embedder.dtype, manifest)
    return features, "resumed" if resumed else "miss"


def _rows(index: int, shard_rows: int, n: int) -> int:
    return min(shard_rows, n - index * shard_rows)
