"""The HTTP server and its handler: limits, the worker pool and its queue, the routes."""

from __future__ import annotations

import io
import json
import queue
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np

from .._validation import NMTuneError
from ..backbones.base import Backbone
from .batcher import MicroBatcher
from .connections import LINGER_SECONDS, DeadlineReader, Lingerer
from .requests import (
    REQUEST_FIELDS,
    APIError,
    ServerLimits,
    check_input,
    encode_row,
    invalid,
    parse_json,
    timed_out,
)


class EmbeddingServer(HTTPServer):
    """An HTTP server that embeds text with one backbone; build it with :func:`make_server`.

    Attributes
    ----------
    backbone : Backbone
    model_name : str
        The only ``model`` that requests may name.
    limits : ServerLimits
    url : str
        Base URL up to ``/v1``, what :class:`~nmtune.backbones.OpenAIEmbeddings` takes.
    batcher : MicroBatcher
    """

    #: Listen backlog (the kernel caps it at net.core.somaxconn): a burst of connections
    #: waits to be accepted instead of being refused.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        backbone: Backbone,
        model_name: str,
        api_key: str | None,
        log_requests: bool,
        limits: ServerLimits,
    ):
        self._stopping = threading.Event()  # before binding: a failed bind calls server_close
        self._services: list[MicroBatcher | Lingerer] = []
        super().__init__(address, _Handler)
        self.backbone = backbone
        self.model_name = model_name
        self.api_key = api_key
        self.log_requests = log_requests
        self.limits = limits
        self.batcher = MicroBatcher(backbone, limits.max_batch_inputs)
        self.lingerer = Lingerer(LINGER_SECONDS)
        self.connections: queue.Queue = queue.Queue(limits.queue_size)
        self._services = [self.batcher, self.lingerer]
        self._workers = [
            threading.Thread(target=self._work, name=f"nmtune-worker-{i}", daemon=True)
            for i in range(limits.workers)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def process_request(self, request, client_address) -> None:
        try:
            self.connections.put_nowait((request, client_address))
        except queue.Full:
            self._answer_busy(request)

    def _answer_busy(self, sock: socket.socket) -> None:
        message = (
            f"the server is busy ({self.limits.workers} workers, {self.limits.queue_size} "
            f"waiting); retry after {self.limits.retry_after} s"
        )
        body = json.dumps(
            APIError(HTTPStatus.SERVICE_UNAVAILABLE, message, kind="server_error").body
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Retry-After: {self.limits.retry_after}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            sock.settimeout(1.0)  # a fresh socket's send buffer takes this at once
            sock.sendall(head.encode() + body)
        except OSError:
            pass
        self.lingerer.close(sock)

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                request, address = self.connections.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.finish_request(request, address)
            except Exception:
                self.handle_error(request, address)
            finally:
                self.lingerer.close(request)

    def server_close(self) -> None:
        super().server_close()
        self._stopping.set()
        for service in self._services:
            service.stop()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``: (len(texts), D) float32, checked finite and of one row each."""
        return self.batcher.embed(texts)

    def models_body(self) -> dict:
        """The answer to ``GET /v1/models``: the one model served."""
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        """The answer to ``GET /v1/models/MODEL``."""
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "nmtune"}

    def embeddings_body(self, request: Any) -> dict:
        """The answer to one parsed ``POST /v1/embeddings`` body; raises :class:`APIError`."""
        texts, encoding = self._check_request(request)
        vectors = self.embed(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_row(row, encoding)}
            for i, row in enumerate(vectors)
        ]
        # No tokenizer is assumed of the backbone, so usage counts whitespace-separated words.
        words = sum(len(text.split()) for text in texts)
        return {
            "object": "list",
            "data": data,
            "model": self.model_name,
            "usage": {"prompt_tokens": words, "total_tokens": words},
        }

    def _check_request(self, request: Any) -> tuple[list[str], str]:
        if not isinstance(request, dict):
            raise invalid("the request body must be a JSON object")
        unknown = sorted(set(request) - REQUEST_FIELDS)
        if unknown:
            raise invalid(
                f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0]
            )
        if "model" not in request:
            raise invalid("you must provide a model parameter", "model")
        if request["model"] != self.model_name:
            raise APIError(
                HTTPStatus.NOT_FOUND,
                f"The model {request['model']!r} does not exist; this server serves "
                f"{self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        texts = check_input(request.get("input"), self.limits)
        encoding = request.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise invalid(
                f"encoding_format must be 'float' or 'base64', got {encoding!r}", "encoding_format"
            )
        dimensions = request.get("dimensions")
        if dimensions is not None and dimensions != self.backbone.feature_dim:
            raise invalid(
                f"{self.model_name} returns {self.backbone.feature_dim}-d embeddings and cannot "
                f"shorten them; got dimensions={dimensions!r}",
                "dimensions",
            )
        return texts, encoding


class _Handler(BaseHTTPRequestHandler):
    server: EmbeddingServer
    protocol_version = "HTTP/1.1"  # keep-alive: a study sends hundreds of requests
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK of the first, adding ~40 ms to every answer.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by a reader with deadlines
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self.reader.deadline = time.monotonic() + self.server.limits.header_timeout
        self.reader.received = 0
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.parse_request():  # it has answered the error
                return
        except TimeoutError:
            self.close_connection = True
            if self.reader.received:  # a request had begun; an idle keep-alive gets no answer
                self.requestline = self.request_version = self.command = ""
                self._send_error(timed_out("headers", self.server.limits.header_timeout))
            return
        except OSError:  # reset by the client: nobody to answer
            self.close_connection = True
            return
        self.reader.deadline = None
        self._unread = "Transfer-Encoding" in self.headers or self.headers.get(
            "Content-Length", "0"
        ).strip() not in ("", "0")
        self._answer(self._route)

    def _route(self) -> dict:
        if self.command == "GET":
            return self._get()
        if self.command == "POST":
            return self._post()
        self.close_connection = True  # a HEAD client would misread the body that follows
        raise APIError(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"method {self.command} is not allowed; use GET or POST",
            headers={"Allow": "GET, POST"},
        )

    def _get(self) -> dict:
        self._authorize()
        if self.path.rstrip("/") == "/v1/models":
            return self.server.models_body()
        if self.path == f"/v1/models/{self.server.model_name}":
            return self.server.model_card()
        raise APIError(HTTPStatus.NOT_FOUND, f"no route GET {self.path}", code="not_found")

    def _post(self) -> dict:
        if self.path.rstrip("/") != "/v1/embeddings":
            raise APIError(HTTPStatus.NOT_FOUND, f"no route POST {self.path}", code="not_found")
        self._authorize()
        body = self._read_body()
        return self.server.embeddings_body(parse_json(body))

    def _read_body(self) -> bytes:
        length = self._content_length()
        timeout = self.server.limits.body_timeout
        self.reader.deadline = time.monotonic() + timeout
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise timed_out("body", timeout) from None
        self.reader.deadline = None
        if len(body) < length:
            raise invalid(f"the body ended after {len(body)} of {length} bytes")
        self._unread = False
        return body

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            raise APIError(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key; send 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    def _content_length(self) -> int:
        limit = self.server.limits.max_body_bytes
        declared = self.headers.get("Content-Length")
        try:
            length = int(declared or "")
        except ValueError:
            length = -1
        if "Transfer-Encoding" in self.headers or length < 0:
            raise APIError(
                HTTPStatus.LENGTH_REQUIRED,
                f"need a Content-Length header (of at most {limit} bytes), got {declared!r}",
            )
        if length > limit:
            raise APIError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request body has {length} bytes; at most {limit}",
                code="request_too_large",
            )
        return length

    def _answer(self, compute) -> None:
        try:
            status, body, headers = HTTPStatus.OK, compute(), {}
        except APIError as exc:
            status, body, headers = exc.status, exc.body, exc.headers
        except Exception as exc:  # a backbone failure must reach the client, not kill a thread
            self.log_error("embedding failed: %s: %s", type(exc).__name__, exc)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body = APIError(
                status, f"the backbone failed: {type(exc).__name__}: {exc}", kind="server_error"
            ).body
            headers = {}
        if self._unread:  # the body was not read, so the next request cannot be found
            self.close_connection = True
        self._send(status, body, headers)

    def _send(self, status: HTTPStatus, body: dict, headers: dict[str, str]) -> None:
        payload = json.dumps(body).encode()
        if not self.server.connections.empty():  # others wait for a worker: let them in
            self.close_connection = True
        try:
            self.connection.settimeout(self.server.limits.body_timeout)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up or stopped reading; nothing to tell
            self.close_connection = True

    def _send_error(self, error: APIError) -> None:
        self.close_connection = True
        self._send(error.status, error.body, error.headers)

    def send_error(self, code, message=None, explain=None) -> None:
        # http.server's own refusals (bad request line, oversized headers, ...) answer in JSON
        # like every other error of this API.
        status = HTTPStatus(code)
        if self.request_version == "HTTP/0.9":  # still the default: the request line was bad
            self.request_version = self.protocol_version  # so that headers are written
        self._send_error(APIError(status, message or status.phrase))

    def log_message(self, format: str, *args) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def log_error(self, format: str, *args) -> None:
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")


def make_server(
    backbone: Backbone,
    host: str = "127.0.0.1",
    port: int = 8765,
    model_name: str | None = None,
    api_key: str | None = None,
    log_requests: bool = False,
    limits: ServerLimits | None = None,
) -> EmbeddingServer:
    """Bind an OpenAI-compatible embeddings server for ``backbone`` (not yet serving).

    Call ``serve_forever()`` on the result (in a thread, or the main one) and ``shutdown()``
    then ``server_close()`` to stop it.

    Parameters
    ----------
    backbone : Backbone
        A text backbone (``modality == "text"``): ``embed(list[str]) -> (B, D)``.
    host : str
        Interface to listen on; the default keeps the server local.
    port : int
        0 picks a free port (read it back from ``server.url``).
    model_name : str or None
        The ``model`` id requests must name; defaults to ``backbone.name``.
    api_key : str or None
        When set, every request needs ``Authorization: Bearer API_KEY`` (else 401).
    log_requests : bool
        Log one line per request to stderr.
    limits : ServerLimits or None
        Request sizes, concurrency and timeouts; ``None`` takes the defaults.

    Returns
    -------
    EmbeddingServer

    Examples
    --------
    >>> server = make_server(create_backbone("minilm"), port=0)
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> OpenAIEmbeddings(server.url, server.model_name)(["a sentence"]).shape
    (1, 384)
    """
    if getattr(backbone, "modality", None) != "text":
        raise NMTuneError(
            f"an embeddings API serves text; backbone {backbone.name!r} takes "
            f"{getattr(backbone, 'modality', 'unknown')} inputs"
        )
    if api_key is not None and not api_key:
        raise NMTuneError("api_key must be a non-empty string or None")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise NMTuneError(f"port must be an integer in [0, 65535], got {port!r}")
    limits = ServerLimits() if limits is None else limits
    try:
        return EmbeddingServer(
            (host, port), backbone, model_name or backbone.name, api_key, log_requests, limits
        )
    except OSError as exc:
        raise NMTuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
