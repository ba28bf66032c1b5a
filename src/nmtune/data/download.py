"""Resumable, checksum-verified, atomic downloads over plain ``urllib``.

A download streams into ``DEST.part``. When that file exists from an interrupted run the next
request asks for the rest with an HTTP ``Range`` header; a server that ignores it (answers
``200`` with the whole body) restarts the file. Only a complete file whose size and sha256
check out is renamed onto ``DEST``, so ``DEST`` is either absent or correct, never partial.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .._hashing import sha256_file
from .._validation import NMTuneError

#: Read size per chunk; large enough for speed, small enough for a smooth progress bar.
_CHUNK = 1 << 16
#: Errors after which the part file is kept and the request retried (resuming).
_TRANSIENT = (
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    ConnectionError,
    socket.timeout,
    TimeoutError,
)


def data_home() -> Path:
    """Where downloads are kept: ``$NMTUNE_DATA`` or ``~/.cache/nmtune/data``."""
    env = os.environ.get("NMTUNE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nmtune" / "data"


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    *,
    size: int | None = None,
    timeout: float = 30,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Parameters
    ----------
    url : str
    dest : path-like
        Final file. Created only once the whole body is present and verified.
    sha256 : str, optional
        Expected hex digest. A mismatch deletes the partial file and raises.
    size : int, optional
        Expected size in bytes, checked before the digest.
    timeout : float
        Seconds to wait on connect and on each read.
    retries : int
        Extra attempts after server errors (5xx, 429), dropped connections and timeouts.
        Each attempt resumes from the bytes already received. 4xx errors are not retried.
    backoff : float
        Seconds before the first retry; doubles after each.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    Path
        ``dest``.
    """
    dest = Path(dest)
    if dest.is_file():
        if _verified(dest, sha256, size):
            return dest
        dest.unlink()  # corrupt or stale: never leave it where a reader would trust it
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as exc:
            if not _retryable_status(exc.code) or attempt == retries:
                raise NMTuneError(
                    f"download of {url} failed: HTTP {exc.code} {exc.reason}"
                ) from None
        except urllib.error.URLError as exc:
            if attempt == retries:
                raise NMTuneError(
                    f"cannot reach {url} ({exc.reason}); are you offline? Download it elsewhere "
                    f"and place it at {dest}"
                ) from None
        except _TRANSIENT as exc:
            if attempt == retries:
                raise NMTuneError(
                    f"download of {url} kept failing ({type(exc).__name__}: {exc}); "
                    f"{_size(part)} bytes kept in {part} and resumed next time"
                ) from None
        time.sleep(backoff * 2**attempt)
    _check_part(part, url, sha256, size)
    with open(part, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One request: append the missing tail of ``url`` to ``part``, or rewrite it whole.

    Raises ``http.client.IncompleteRead`` when the body ends before its announced length, so
    the caller retries and resumes.
    """
    offset = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": "nmtune"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        # 416: nothing left past ``offset``; the part is already whole (or too long, which
        # the size/checksum check then rejects).
        if exc.code == 416 and offset:
            return
        raise
    with response:
        resumed = response.status == 206
        if resumed and _range_start(response) != offset:
            part.unlink(missing_ok=True)
            raise ConnectionError(f"server answered a range other than bytes={offset}-")
        if not resumed:
            offset = 0  # the server ignored Range and sent the whole body: start over
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        received = _stream(response, part, "ab" if resumed else "wb", offset, expected, progress)
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def _stream(response, part: Path, mode: str, offset: int, total: int | None, progress: bool) -> int:
    """Copy ``response`` into ``part`` chunk by chunk; return the file's final size."""
    from tqdm.auto import tqdm

    with (
        open(part, mode) as fh,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=part.name[:-5],
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        while chunk := response.read(_CHUNK):
            fh.write(chunk)
            bar.update(len(chunk))
        fh.flush()
        return fh.tell()


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _retryable_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


def _check_part(part: Path, url: str, sha256: str | None, size: int | None) -> None:
    """Raise (and delete ``part``) unless it has the expected size and digest."""
    actual_size = _size(part)
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise NMTuneError(f"download of {url} has {actual_size} bytes, expected {size}")
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise NMTuneError(
                f"checksum mismatch for {url}: sha256 {actual}, expected {sha256}; the file "
                "was deleted (a changed or corrupted upstream file, or a proxy in the way)"
            )


def _verified(path: Path, sha256: str | None, size: int | None) -> bool:
    if size is not None and _size(path) != size:
        return False
    return sha256 is None or sha256_file(path) == sha256.lower()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
