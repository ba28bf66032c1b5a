"""An OpenAI-compatible embeddings server over any text backbone: black-box NMTune, locally.

``make_server(backbone, ...)`` answers ``POST /v1/embeddings`` and ``GET /v1/models`` the way a
hosted embeddings API does, so a study whose backbone is ``openai:MODEL`` (the
:class:`~nmtune.backbones.OpenAIEmbeddings` adapter) sees nothing of the model but the vectors
it returns. Requests are validated like OpenAI's (the same error body,
``{"error": {"message", "type", "param", "code"}}``, for every error, HTTP-level ones
included); ``encoding_format`` may be ``"float"`` or ``"base64"`` (little-endian float32, what
the official Python client asks for).

It holds up as a service (every bound is a :class:`ServerLimits` field and a CLI flag):

- *Bounded requests.* A body over ``max_body_bytes`` is answered 413 before it is read; more
  than ``max_inputs`` inputs, or an input over ``max_input_chars`` characters, 400 (OpenAI
  refuses over-long inputs the same way). Within that, the backbone truncates each input to
  its own maximum sequence length (``max_seq_length`` tokens for sentence-transformers
  models): text beyond it does not change the embedding.
- *Bursts.* A listen backlog of :attr:`EmbeddingServer.request_queue_size`, ``workers``
  threads serving connections and a queue of ``queue_size`` accepted connections; when that
  queue is full a connection is answered 503 with ``Retry-After`` at once, never dropped.
- *Slow clients.* A request's line and headers must arrive within ``header_timeout`` seconds
  and its body within ``body_timeout``; a slow client is answered 408 and disconnected.
- *One model, shared passes.* A single thread runs the backbone; requests that arrive while
  it is busy are coalesced into the next forward pass (at most ``max_batch_inputs`` texts,
  shared equally among the waiting requests, sorted by length), so a burst of small requests
  costs a few passes, not one each, a small request is not stuck behind a big one, and a
  lone request waits for nobody. A batched model may differ in the last bits with batch
  composition, as in any batched inference.
- *Closing politely.* A connection closed with unread input would be reset, losing the
  answer; so the server stops writing, reads what the client still sends (for up to
  :data:`LINGER_SECONDS`) and only then closes.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import queue
import selectors
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np

from ._validation import NMTuneError
from .backbones.base import Backbone

#: Most inputs per request by default, as OpenAI's API allows.
MAX_INPUTS = 2048
#: Request fields the OpenAI embeddings endpoint defines; anything else is refused.
REQUEST_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
#: Seconds a closing connection is drained of unread input before it is closed.
LINGER_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """The bounds of an :class:`EmbeddingServer`; the defaults suit a local study server.

    Parameters
    ----------
    max_body_bytes : int
        Largest request body; a longer ``Content-Length`` is answered 413 unread.
    max_input_chars : int
        Most characters in one input (400 beyond). 32,768 is about OpenAI's 8,192-token limit.
    max_inputs : int
        Most inputs in one request (400 beyond).
    max_batch_inputs : int
        Most inputs in one forward pass of the backbone: bounds its memory, and how long a
        request arriving during a pass waits for the next.
    workers : int
        Threads serving connections; a request's memory is at most about three times
        ``max_body_bytes``, so the server's peak is bounded by ``workers`` times that.
    queue_size : int
        Accepted connections waiting for a worker; beyond them, 503 with ``Retry-After``.
    header_timeout, body_timeout : float
        Seconds for a request's line and headers (also how long an idle keep-alive connection
        stays open), and for its body (also the time allowed to write an answer).
    retry_after : int
        Seconds a 503 asks the client to wait.
    """

    max_body_bytes: int = 4 * 2**20
    max_input_chars: int = 32_768
    max_inputs: int = MAX_INPUTS
    max_batch_inputs: int = 32
    workers: int = 16
    queue_size: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    retry_after: int = 1

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise NMTuneError(
                    f"server limit {field.name} must be a positive number, got {value!r}"
                )
            if field.type == "int" and not isinstance(value, int):
                raise NMTuneError(f"server limit {field.name} must be an integer, got {value!r}")


class APIError(Exception):
    """A request the server refuses: becomes an HTTP status and an OpenAI-style error body."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message, param=param, code=code)


def _take_waiting(items: queue.SimpleQueue, block: bool) -> tuple[list, bool]:
    """Everything waiting in ``items`` (waiting for a first one if ``block``, as a thread
    with nothing else to do does), and whether the stop signal ``None`` was among them."""
    taken = []
    try:
        while (item := items.get(block=block and not taken)) is not None:
            taken.append(item)
    except queue.Empty:
        return taken, False
    return taken, True


class _Job:
    """One request's texts on their way through the :class:`MicroBatcher`, a slice per pass."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.next = 0  # first text not yet embedded
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.next

    def store(self, vectors: np.ndarray) -> None:
        if self.result is None:
            self.result = np.empty((len(self.texts), vectors.shape[1]), dtype=np.float32)
        self.result[self.next : self.next + len(vectors)] = vectors
        self.next += len(vectors)
        if not self.remaining:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class MicroBatcher:
    """Run one backbone from one thread, coalescing concurrent requests into shared passes.

    Requests that arrive while the model is busy wait in a queue, and each pass serves all
    waiting requests together: at most ``max_batch_inputs`` texts, shared out equally among
    them, sorted by length so that little padding is computed. A big request thus runs in
    several passes and a small one that arrives meanwhile joins the next pass instead of
    waiting for the big one to finish; a lone request waits for nobody. If a shared pass
    fails, each request's share is run alone, so one bad input fails only its own request.

    Parameters
    ----------
    backbone : Backbone
    max_batch_inputs : int
    """

    def __init__(self, backbone: Backbone, max_batch_inputs: int):
        self.backbone = backbone
        self.max_batch_inputs = max_batch_inputs
        self._width: int | None = None  # learned from the first answer, then enforced
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="nmtune-model", daemon=True)
        self._thread.start()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``, (len(texts), D) float32; raises what the backbone raised."""
        job = _Job(texts)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def waiting(self) -> int:
        """Requests queued for the model and not yet taken into a pass."""
        return self._jobs.qsize()

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        active: list[_Job] = []
        while True:
            new, stop = _take_waiting(self._jobs, block=not active)
            active += new
            if stop:
                for job in active:
                    job.fail(RuntimeError("the server is stopping"))
                return
            self._run_pass(self._share(active))
            active = [job for job in active if not job.done.is_set()]

    def _share(self, active: list[_Job]) -> list[tuple[_Job, int]]:
        """How many texts each request puts into the next pass: equal shares of the capacity,
        what a request does not need going to the others."""
        capacity, taken = self.max_batch_inputs, dict.fromkeys(active, 0)
        while capacity:
            hungry = [job for job in active if taken[job] < job.remaining]
            if not hungry:
                break
            share = max(1, capacity // len(hungry))
            for job in hungry[:capacity]:
                n = min(share, job.remaining - taken[job])
                taken[job] += n
                capacity -= n
        return [(job, n) for job, n in taken.items() if n]

    def _run_pass(self, shares: list[tuple[_Job, int]]) -> None:
        texts = [t for job, n in shares for t in job.texts[job.next : job.next + n]]
        try:
            vectors = self._forward(texts)
        except Exception as exc:
            if len(shares) == 1:
                shares[0][0].fail(exc)
            else:
                for share in shares:
                    self._run_pass([share])
            return
        row = 0
        for job, n in shares:
            job.store(vectors[row : row + n])
            row += n

    def _forward(self, texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.asarray(self.backbone.embed([texts[i] for i in order]), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise RuntimeError(
                f"backbone {self.backbone.name} returned shape {vectors.shape} for {len(texts)} "
                "inputs"
            )
        if self._width is None:
            self._width = vectors.shape[1]
        elif vectors.shape[1] != self._width:
            raise RuntimeError(
                f"backbone {self.backbone.name} returned {vectors.shape[1]}-d embeddings after "
                f"{self._width}-d ones"
            )
        if not np.isfinite(vectors).all():
            raise RuntimeError(f"backbone {self.backbone.name} returned non-finite embeddings")
        out = np.empty_like(vectors)
        out[order] = vectors
        return out


class _Lingerer:
    """Close sockets without resetting them: stop writing, drain the client's unread input
    (until it closes, or for ``seconds``), then close. One thread serves every such socket."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._incoming: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="nmtune-linger", daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:  # already reset by the client
            sock.close()
            return
        self._incoming.put(sock)

    def stop(self) -> None:
        self._incoming.put(None)

    def _run(self) -> None:
        deadlines: dict[socket.socket, float] = {}
        with selectors.DefaultSelector() as selector:
            while True:
                new, stop = _take_waiting(self._incoming, block=not deadlines)
                for sock in new:
                    deadlines[sock] = time.monotonic() + self.seconds
                    selector.register(sock, selectors.EVENT_READ)
                if stop:
                    for sock in deadlines:
                        sock.close()
                    return
                for key, _ in selector.select(timeout=0.05):
                    if not self._drain(key.fileobj):
                        deadlines[key.fileobj] = 0.0
                now = time.monotonic()
                for sock in [s for s, deadline in deadlines.items() if deadline <= now]:
                    selector.unregister(sock)
                    del deadlines[sock]
                    sock.close()

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        """Read what is there; False once the client has closed (or reset) its side."""
        try:
            return bool(sock.recv(1 << 16))
        except BlockingIOError:
            return True
        except OSError:
            return False


class _DeadlineReader(io.RawIOBase):
    """A socket's input with an overall deadline: a slow client cannot stretch a request by
    sending a byte now and then, as it could against a per-read timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("read deadline passed")
            self.sock.settimeout(left)
        n = self.sock.recv_into(buffer)
        self.received += n
        return n


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
        self._services: list[MicroBatcher | _Lingerer] = []
        super().__init__(address, _Handler)
        self.backbone = backbone
        self.model_name = model_name
        self.api_key = api_key
        self.log_requests = log_requests
        self.limits = limits
        self.batcher = MicroBatcher(backbone, limits.max_batch_inputs)
        self.lingerer = _Lingerer(LINGER_SECONDS)
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
            {"object": "embedding", "index": i, "embedding": _encode(row, encoding)}
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
            raise _invalid("the request body must be a JSON object")
        unknown = sorted(set(request) - REQUEST_FIELDS)
        if unknown:
            raise _invalid(
                f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0]
            )
        if "model" not in request:
            raise _invalid("you must provide a model parameter", "model")
        if request["model"] != self.model_name:
            raise APIError(
                HTTPStatus.NOT_FOUND,
                f"The model {request['model']!r} does not exist; this server serves "
                f"{self.model_name!r}",
                param="model",
                code="model_not_found",
            )
        texts = _check_input(request.get("input"), self.limits)
        encoding = request.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _invalid(
                f"encoding_format must be 'float' or 'base64', got {encoding!r}", "encoding_format"
            )
        dimensions = request.get("dimensions")
        if dimensions is not None and dimensions != self.backbone.feature_dim:
            raise _invalid(
                f"{self.model_name} returns {self.backbone.feature_dim}-d embeddings and cannot "
                f"shorten them; got dimensions={dimensions!r}",
                "dimensions",
            )
        return texts, encoding


def _check_input(value: Any, limits: ServerLimits) -> list[str]:
    """``input`` as a non-empty list of non-empty, valid Unicode strings within the limits."""
    if value is None:
        raise _invalid("'input' is a required property", "input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _invalid(
            "'input' must be a string or a list of strings (token arrays are not supported)",
            "input",
        )
    if not texts:
        raise _invalid("'input' must not be an empty list", "input")
    if len(texts) > limits.max_inputs:
        raise _invalid(
            f"'input' holds {len(texts)} items; at most {limits.max_inputs} per request", "input"
        )
    for i, text in enumerate(texts):
        if not text:
            raise _invalid(f"'input[{i}]' is an empty string", "input")
        if len(text) > limits.max_input_chars:
            raise _invalid(
                f"'input[{i}]' has {len(text)} characters; at most {limits.max_input_chars} per "
                "input",
                "input",
                "input_too_long",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON can escape a lone surrogate, UTF-8 cannot
            raise _invalid(
                f"'input[{i}]' is not valid Unicode: a lone surrogate at character {exc.start}",
                "input",
            ) from None
    return texts


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("the request body's JSON is nested too deeply") from None


def _encode(row: np.ndarray, encoding: str) -> list[float] | str:
    """One embedding as JSON numbers (exact: each float32 survives the round trip) or base64."""
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


class _Handler(BaseHTTPRequestHandler):
    server: EmbeddingServer
    protocol_version = "HTTP/1.1"  # keep-alive: a study sends hundreds of requests
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK of the first, adding ~40 ms to every answer.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by a reader with deadlines
        self.reader = _DeadlineReader(self.connection)
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
                self._send_error(_timed_out("headers", self.server.limits.header_timeout))
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
        return self.server.embeddings_body(_parse_json(body))

    def _read_body(self) -> bytes:
        length = self._content_length()
        timeout = self.server.limits.body_timeout
        self.reader.deadline = time.monotonic() + timeout
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise _timed_out("body", timeout) from None
        self.reader.deadline = None
        if len(body) < length:
            raise _invalid(f"the body ended after {len(body)} of {length} bytes")
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


def _timed_out(part: str, seconds: float) -> APIError:
    return APIError(
        HTTPStatus.REQUEST_TIMEOUT,
        f"the request {part} did not arrive within {seconds:g} s",
        code="timeout",
    )


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
    limits = ServerLimits() if limits is None else limits
    try:
        return EmbeddingServer(
            (host, port), backbone, model_name or backbone.name, api_key, log_requests, limits
        )
    except OSError as exc:
        raise NMTuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
