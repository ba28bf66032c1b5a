"""Files that are never half-written, and the ``.npz`` feature-file format the CLI exchanges."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._validation import NMTuneError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers see the old file or the complete new one, never a partial write, even if the
    process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 less umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes_atomic(path, text.encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_feature_file(path, features: np.ndarray, labels: np.ndarray, meta: dict | None = None):
    """Write ``features`` (N×D or V×N×D), ``labels`` (N) and JSON ``meta`` to ``path`` atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise NMTuneError(f"feature file must end in .npz, got {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            meta_json = json.dumps(meta or {}, default=str)
            np.savez(fh, features=features, labels=labels, meta=meta_json)


def load_feature_file(path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a feature file written by :func:`save_feature_file` (or any npz with the two keys)."""
    path = Path(path)
    if not path.is_file():
        raise NMTuneError(f"feature file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"features", "labels"} - set(npz.files)
            if missing:
                raise NMTuneError(
                    f"{path} lacks {sorted(missing)}; a feature file holds 'features' "
                    f"(N×D or V×N×D) and 'labels' (N)"
                )
            meta = json.loads(str(npz["meta"])) if "meta" in npz.files else {}
            return npz["features"], npz["labels"], meta
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, NMTuneError):
            raise
        raise NMTuneError(f"{path} is not a readable .npz file: {exc}") from None


def read_csv_table(path: Path, required: tuple[str, ...] = ()):
    """Read a CSV file as a DataFrame, or raise one line naming the file and what is wrong.

    ``required`` columns must be present. The caller checks that ``path`` exists, so that its
    message can say what the missing file should have been.
    """
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise NMTuneError(f"{path} is not a readable CSV table: {exc}") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise NMTuneError(f"{path} lacks the column(s) {missing}")
    return table
