"""An OpenAI-compatible embeddings server over any text backbone: black-box NMTune, locally.

``make_server(backbone, ...)`` answers ``POST /v1/embeddings`` and ``GET /v1/models`` the way a
hosted embeddings API does, so a study whose backbone is ``openai:MODEL`` (the
:class:`~nmtune.backbones.OpenAIEmbeddings` adapter) sees nothing of the model but the vectors
it returns. Requests are validated like OpenAI's (the same error body,
``{"error": {"message", "type", "param", "code"}}``); ``encoding_format`` may be ``"float"``
or ``"base64"`` (little-endian float32, what the official Python client asks for).

Threads serve connections concurrently; one lock serialises the model, which is neither
guaranteed thread-safe nor faster when run twice at once on the same cores.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from ._validation import NMTuneError
from .backbones.base import Backbone

#: Most inputs per request, as OpenAI's API allows.
MAX_INPUTS = 2048
#: Largest request body read (bytes); longer ones are refused before reading.
MAX_BODY_BYTES = 64 * 2**20
#: Request fields the OpenAI embeddings endpoint defines; anything else is refused.
REQUEST_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


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
    ):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _invalid(message: str, param: str | None = None) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message, param=param)


class EmbeddingServer(ThreadingHTTPServer):
    """An HTTP server that embeds text with one backbone; build it with :func:`make_server`.

    Attributes
    ----------
    backbone : Backbone
    model_name : str
        The only ``model`` that requests may name.
    url : str
        Base URL up to ``/v1``, what :class:`~nmtune.backbones.OpenAIEmbeddings` takes.
    """

    daemon_threads = True  # a hung client never keeps the process alive at shutdown

    def __init__(
        self,
        address: tuple[str, int],
        backbone: Backbone,
        model_name: str,
        api_key: str | None,
        log_requests: bool,
    ):
        super().__init__(address, _Handler)
        self.backbone = backbone
        self.model_name = model_name
        self.api_key = api_key
        self.log_requests = log_requests
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``: (len(texts), D) float32, checked finite and of one row each."""
        with self.lock:
            vectors = np.asarray(self.backbone.embed(texts), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise RuntimeError(
                f"backbone {self.backbone.name} returned shape {vectors.shape} for {len(texts)} "
                "inputs"
            )
        if not np.isfinite(vectors).all():
            raise RuntimeError(f"backbone {self.backbone.name} returned non-finite embeddings")
        return vectors

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
        texts = _check_input(request.get("input"))
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


def _check_input(value: Any) -> list[str]:
    """``input`` as a non-empty list of non-empty strings (a single string is one input)."""
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
    if len(texts) > MAX_INPUTS:
        raise _invalid(
            f"'input' holds {len(texts)} items; at most {MAX_INPUTS} per request", "input"
        )
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise _invalid(f"'input[{empty}]' is an empty string", "input")
    return texts


def _encode(row: np.ndarray, encoding: str) -> list[float] | str:
    """One embedding as JSON numbers (exact: each float32 survives the round trip) or base64."""
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


class _Handler(BaseHTTPRequestHandler):
    server: EmbeddingServer
    protocol_version = "HTTP/1.1"  # keep-alive: a study sends hundreds of requests

    def do_GET(self) -> None:
        self._answer(lambda: self._get())

    def do_POST(self) -> None:
        self._answer(lambda: self._post())

    def _get(self) -> dict:
        self._authorize()
        if self.path.rstrip("/") == "/v1/models":
            return self.server.models_body()
        if self.path == f"/v1/models/{self.server.model_name}":
            return self.server.model_card()
        raise APIError(HTTPStatus.NOT_FOUND, f"no route GET {self.path}", code="not_found")

    def _post(self) -> dict:
        # Read the whole body first, whatever the verdict: closing a socket with unread input
        # resets it, and the client would lose the error answer.
        body = self.rfile.read(self._content_length())
        if self.path.rstrip("/") != "/v1/embeddings":
            raise APIError(HTTPStatus.NOT_FOUND, f"no route POST {self.path}", code="not_found")
        self._authorize()
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _invalid(f"the request body is not valid JSON: {exc}") from None
        return self.server.embeddings_body(request)

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            raise APIError(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key; send 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    def _content_length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            # The body cannot be read (or skipped) safely: answer, then drop the connection.
            self.close_connection = True
            raise APIError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0 else HTTPStatus.LENGTH_REQUIRED,
                f"need a Content-Length header of at most {MAX_BODY_BYTES} bytes, got "
                f"{self.headers.get('Content-Length')!r}",
            )
        return length

    def _answer(self, compute) -> None:
        try:
            status, body = HTTPStatus.OK, compute()
        except APIError as exc:
            status, body = exc.status, exc.body
        except Exception as exc:  # a backbone failure must reach the client, not kill a thread
            self.log_error("embedding failed: %s: %s", type(exc).__name__, exc)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body = APIError(
                status, f"the backbone failed: {type(exc).__name__}: {exc}", kind="server_error"
            ).body
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up; nothing to tell
            self.close_connection = True

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
    try:
        return EmbeddingServer(
            (host, port), backbone, model_name or backbone.name, api_key, log_requests
        )
    except OSError as exc:
        raise NMTuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
