"""The downloader against a local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import struct

import numpy as np
import pytest

from nmtune._validation import NMTuneError
from nmtune.data import sources
from nmtune.data.download import download

PAYLOAD = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /file (honours Range), /norange, /drop (cuts the first body short),
    /flaky (500 once), /down (always 503), /missing (404); /files/NAME serves ``server.files``."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.log.append((self.path, self.headers.get("Range")))
        hits = sum(1 for path, _ in server.log if path == self.path)
        if self.path == "/missing":
            return self.send_error(404)
        if self.path == "/down" or (self.path == "/flaky" and hits == 1):
            return self.send_error(500 if self.path == "/flaky" else 503)
        if self.path.startswith("/files/"):
            body = server.files.get(self.path[len("/files/") :])
            return self._send(body) if body is not None else self.send_error(404)
        start = self._range_start() if self.path != "/norange" else None
        if self.path == "/drop" and hits == 1:
            # Announce the whole body, send half, hang up.
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(PAYLOAD, start)

    def _range_start(self) -> int | None:
        header = self.headers.get("Range")
        return int(header.split("=")[1].rstrip("-")) if header else None

    def _send(self, body: bytes, start: int | None = None):
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(local_http):
    httpd = local_http(_Handler)
    httpd.log, httpd.files = [], {}
    return httpd


def _get(server, route, dest, **kw):
    return download(
        f"{server.url}{route}", dest, kw.pop("sha256", SHA), progress=False, backoff=0, **kw
    )


def test_normal_download_is_verified_and_not_repeated(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    assert _get(server, "/file", dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "file.bin.part").exists()
    _get(server, "/file", dest)
    assert len(server.log) == 1  # the verified copy is reused


def test_resumes_a_truncated_partial_with_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:12_345])
    _get(server, "/file", dest)
    assert server.log == [("/file", "bytes=12345-")]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"garbage that must not survive")
    _get(server, "/norange", dest)
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connection_is_resumed(server, tmp_path):
    dest = tmp_path / "file.bin"
    _get(server, "/drop", dest, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.log) == 2
    assert server.log[1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_wrong_checksum_deletes_everything(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(NMTuneError, match="checksum mismatch"):
        _get(server, "/file", dest, sha256="0" * 64)
    assert not dest.exists()
    assert not (tmp_path / "file.bin.part").exists()


def test_corrupt_existing_file_is_replaced(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"stale")
    _get(server, "/file", dest)
    assert dest.read_bytes() == PAYLOAD


def test_server_error_is_retried(server, tmp_path):
    dest = tmp_path / "file.bin"
    _get(server, "/flaky", dest, retries=1)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.log) == 2


def test_persistent_server_error_gives_up(server, tmp_path):
    with pytest.raises(NMTuneError, match="HTTP 503"):
        _get(server, "/down", tmp_path / "f", retries=2)
    assert len(server.log) == 3


def test_client_error_is_not_retried(server, tmp_path):
    with pytest.raises(NMTuneError, match="HTTP 404"):
        _get(server, "/missing", tmp_path / "f", retries=3)
    assert len(server.log) == 1
    assert not (tmp_path / "f").exists()


def _dead_url() -> str:
    """A loopback URL on a port nobody listens on: connecting is refused, as when offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def test_offline_gives_a_clear_error(tmp_path):
    with pytest.raises(NMTuneError, match="offline"):
        download(_dead_url() + "x", tmp_path / "x", retries=1, backoff=0, progress=False)


def _idx(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return gzip.compress(header + array.tobytes())


def test_fashion_mnist_downloads_when_debian_package_is_absent(server, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 10
    files = {"t10k-images-idx3-ubyte.gz": _idx(images), "t10k-labels-idx1-ubyte.gz": _idx(labels)}
    server.files.update(files)
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "FASHION_MNIST_URL", f"{server.url}/files/")
    monkeypatch.setattr(
        sources,
        "FASHION_MNIST_SHA256",
        {k: hashlib.sha256(v).hexdigest() for k, v in files.items()},
    )
    monkeypatch.setenv("NMTUNE_DATA", str(tmp_path / "cache"))
    sources.forget_loaded()
    try:
        data = sources.load_fashion_mnist("test")
    finally:
        sources.forget_loaded()
    np.testing.assert_array_equal(data.inputs[:, 0], images / np.float32(255))
    np.testing.assert_array_equal(data.labels, labels)
    assert (tmp_path / "cache" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_fashion_mnist_offline_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "FASHION_MNIST_URL", _dead_url())
    monkeypatch.setenv("NMTUNE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("nmtune.data.download.time.sleep", lambda s: None)
    with pytest.raises(NMTuneError, match="apt-get install dataset-fashion-mnist"):
        sources.fashion_mnist_file("t10k-labels-idx1-ubyte.gz")
