"""Files that are never half-written, and the ``.npz`` feature-file format the CLI exchanges."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._validation import NMTuneError, available_memory, check_memory, format_bytes

#: Temporary names carry host and pid, so a later writer of the same file can tell a
#: temporary whose writer was killed (SIGKILL skips every cleanup) from one still in use.
_HOST = socket.gethostname().replace(".", "_")


def _reap_orphans(path: Path) -> None:
    """Remove temporaries of ``path`` left by writers on this host that no longer exist.

    Writers on other hosts (a shared cache under Ray) are left alone: their pids mean nothing
    here.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{_HOST}.*.tmp"):
        pid = tmp.name[len(f".{path.name}.{_HOST}."):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers see the old file or the complete new one, never a partial write, even if the
    process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _reap_orphans(path)
    prefix = f".{path.name}.{_HOST}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
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


def make_folder(path: str | os.PathLike, what: str) -> Path:
    """Create folder ``path`` (and its parents) for ``what``; a file in the way is a one-line
    error rather than an OSError traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the path, or a folder above it, is a file
        raise NMTuneError(f"cannot write {what} into {path}: {exc.strerror}; give a folder "
                          "path") from None
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes_atomic(path, text.encode())


def save_feature_file(path, features: np.ndarray, labels: np.ndarray, meta: dict | None = None):
    """Write ``features`` (N×D or V×N×D), ``labels`` (N), JSON ``meta`` atomically to ``path``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise NMTuneError(f"feature file must end in .npz, got {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            meta_json = json.dumps(meta or {}, default=str)
            np.savez(fh, features=features, labels=labels, meta=meta_json)


def load_feature_file(path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a feature file written by :func:`save_feature_file` (or any npz with the two keys).

    Every array's npy header is checked against the bytes the archive holds for it, and its
    size against the memory limit, before the array is allocated: a truncated, corrupted or
    hostile file is an :class:`NMTuneError` naming the problem, never a huge allocation.
    """
    path = Path(path)
    if not path.is_file():
        raise NMTuneError(f"feature file not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
            raise NMTuneError(
                f"{path} is a single .npy array, not an .npz feature file; write features and "
                "labels together, e.g. np.savez(path, features=X, labels=y)"
            )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise NMTuneError(f"{path} is truncated or not a zip (.npz) archive: {exc}") from None
    with archive:
        # np.savez names members "<key>.npy"; np.load accepts either form.
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        missing = {"features", "labels"} - set(members)
        if missing:
            raise NMTuneError(
                f"{path} lacks {sorted(missing)}; a feature file holds 'features' "
                f"(N×D or V×N×D) and 'labels' (N)"
            )
        try:
            features, labels, meta = (
                _read_member(archive, members[key], path) if key in members else "{}"
                for key in ("features", "labels", "meta")
            )
            meta = json.loads(str(meta))
        except zipfile.BadZipFile as exc:
            raise NMTuneError(f"{path} is corrupted: {exc}") from None
        except (OSError, ValueError, EOFError) as exc:
            if isinstance(exc, NMTuneError):
                raise
            raise NMTuneError(f"{path} is not a readable .npz file: {exc}") from None
    return features, labels, meta


#: Deflate cannot expand data by much more than 1032:1 (plus a few bytes of block overhead,
#: hence 1 KiB of slack); a member claiming more than that is not real.
_MAX_DEFLATE_RATIO = 1032
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One npy member of an npz, its header checked against its stored size before reading."""
    name = info.filename
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in _HEADER_READERS:
            raise NMTuneError(f"{path}: {name} has npy format version {version}, not 1.0 or 2.0")
        shape, _, dtype = _HEADER_READERS[version](fh)
        if dtype.hasobject:
            raise NMTuneError(
                f"{path}: {name} has dtype object, which would need pickle; feature files hold "
                "numeric features and numeric or string labels"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        stored = info.file_size - fh.tell()
        if nbytes != stored or info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
            raise NMTuneError(
                f"{path}: {name} claims shape {shape} of {dtype} ({format_bytes(nbytes)}) but "
                f"the archive holds {format_bytes(min(stored, info.compress_size))} for it; "
                "the file is damaged or was not written by numpy"
            )
        check_memory(nbytes, f"reading {name} of {path}", "use a smaller feature file",
                     available_memory())
        fh.seek(0)
        array = np.lib.format.read_array(fh, allow_pickle=False)
        fh.read()  # to the member's end, where zipfile verifies its CRC-32
    return array


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
