"""What a request may be: the server's limits, OpenAI-style errors, input and body checks."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from http import HTTPStatus
from typing import Any

import numpy as np

from .._validation import NMTuneError

#: Most inputs per request by default, as OpenAI's API allows.
MAX_INPUTS = 2048
#: Request fields the OpenAI embeddings endpoint defines; anything else is refused.
REQUEST_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})

#: Upper bounds on the two limits that start threads or hold sockets.
MAX_WORKERS = 1024
MAX_QUEUE = 65536


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
            if (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
                    or not math.isfinite(value)):
                raise NMTuneError(
                    f"server limit {field.name} must be a positive finite number, got {value!r}"
                )
            if field.type == "int" and not isinstance(value, int):
                raise NMTuneError(f"server limit {field.name} must be an integer, got {value!r}")
        # Threads and waiting sockets are real resources: a typo of 100000 workers would start
        # that many threads and lift the memory bound (workers × 3 × body) to hundreds of GB.
        for name, most in (("workers", MAX_WORKERS), ("queue_size", MAX_QUEUE)):
            if getattr(self, name) > most:
                raise NMTuneError(
                    f"server limit {name} must be at most {most}, got {getattr(self, name)}"
                )


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


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message, param=param, code=code)


def check_input(value: Any, limits: ServerLimits) -> list[str]:
    """``input`` as a non-empty list of non-empty, valid Unicode strings within the limits."""
    if value is None:
        raise invalid("'input' is a required property", "input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise invalid(
            "'input' must be a string or a list of strings (token arrays are not supported)",
            "input",
        )
    if not texts:
        raise invalid("'input' must not be an empty list", "input")
    if len(texts) > limits.max_inputs:
        raise invalid(
            f"'input' holds {len(texts)} items; at most {limits.max_inputs} per request", "input"
        )
    for i, text in enumerate(texts):
        if not text:
            raise invalid(f"'input[{i}]' is an empty string", "input")
        if len(text) > limits.max_input_chars:
            raise invalid(
                f"'input[{i}]' has {len(text)} characters; at most {limits.max_input_chars} per "
                "input",
                "input",
                "input_too_long",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON can escape a lone surrogate, UTF-8 cannot
            raise invalid(
                f"'input[{i}]' is not valid Unicode: a lone surrogate at character {exc.start}",
                "input",
            ) from None
    return texts


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid("the request body's JSON is nested too deeply") from None


def encode_row(row: np.ndarray, encoding: str) -> list[float] | str:
    """One embedding as JSON numbers (exact: each float32 survives the round trip) or base64."""
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


def timed_out(part: str, seconds: float) -> APIError:
    return APIError(
        HTTPStatus.REQUEST_TIMEOUT,
        f"the request {part} did not arrive within {seconds:g} s",
        code="timeout",
    )
