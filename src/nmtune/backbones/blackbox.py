"""Black-box backbones: any ``embed(batch) -> array`` function; OpenAI-compatible embedding APIs.

:class:`CallableBackbone` adds what a remote model needs: batching, retries with exponential
backoff on transient failures (:class:`RetryableError`), a bounded request rate, and checks
that every answer has the right shape and finite values. :class:`OpenAIEmbeddings` is such a
function for ``POST {base_url}/embeddings`` servers (OpenAI, vLLM, llama.cpp, TEI, ...).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

import numpy as np

from .._validation import NMTuneError, as_float_array
from .base import Backbone
from .registry import register_backbone

#: HTTP statuses worth retrying: rate limited, or the server (or a proxy) failed transiently.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RetryableError(Exception):
    """Raise from an embedding function when a retry may succeed (rate limit, overload, timeout).

    Parameters
    ----------
    message : str
    retry_after : float or None
        Seconds the server asked us to wait; overrides the backoff when longer.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class MinIntervalLimiter:
    """At most ``rate`` calls per second: each call starts ``1/rate`` s after the previous one.

    A token bucket of capacity one; bursts are not allowed because API quotas are usually
    enforced per short window.
    """

    def __init__(self, rate: float | None, clock=time.monotonic, sleep=time.sleep):
        if rate is not None and not rate > 0:
            raise NMTuneError(f"max_requests_per_second must be positive, got {rate}")
        self.interval = 0.0 if rate is None else 1.0 / rate
        self.clock = clock
        self.sleep = sleep
        self._next = -math.inf

    def wait(self) -> None:
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


class CallableBackbone(Backbone):
    """Wrap an embedding function as a backbone.

    Parameters
    ----------
    fn : callable
        ``fn(chunk) -> array-like (len(chunk), D)`` for a slice of ``Dataset.inputs`` (a list of
        str, or an image array). Raise :class:`RetryableError` for transient failures; any other
        exception propagates at once.
    name : str
    identity : str
        Names the model *version* behind ``fn`` (e.g. ``"openai:text-embedding-3-small@2024"``);
        the feature cache trusts it, so change it whenever the outputs may change.
    modality : {"text", "image"}
    batch_size : int
        Inputs per call of ``fn``.
    max_retries : int
        Retries per chunk after the first attempt.
    backoff : float
        First retry delay in seconds; doubles on every retry, capped at ``max_backoff``.
    max_requests_per_second : float or None
        Upper bound on the call rate (``None``: unbounded).
    feature_dim : int or None
        Expected width; learned from the first answer when ``None``, then enforced.
    """

    def __init__(
        self,
        fn: Callable,
        name: str,
        identity: str,
        modality: str = "text",
        batch_size: int = 64,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_requests_per_second: float | None = None,
        feature_dim: int | None = None,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not callable(fn):
            raise NMTuneError(f"fn must be callable, got {type(fn).__name__}")
        if not identity:
            raise NMTuneError(
                "identity must name the model version behind fn (the cache keys on it)"
            )
        if modality not in ("image", "text"):
            raise NMTuneError(f"modality must be 'image' or 'text', got {modality!r}")
        if batch_size < 1 or max_retries < 0 or backoff < 0:
            raise NMTuneError(
                f"need batch_size >= 1, max_retries >= 0 and backoff >= 0; got {batch_size}, "
                f"{max_retries}, {backoff}"
            )
        self.fn = fn
        self.name = name
        self._identity = identity
        self.modality = modality
        self.batch_size = int(batch_size)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.feature_dim = feature_dim
        self.sleep = sleep
        self.limiter = MinIntervalLimiter(max_requests_per_second, clock=clock, sleep=sleep)
        self.calls = 0  # requests made, retries included

    def identity(self) -> str:
        return f"callable:{self.name}|{self._identity}"

    def embed(self, batch) -> np.ndarray:
        """Features of ``batch``, in chunks of ``batch_size``. Returns (B, feature_dim) float32."""
        chunks = [
            self._embed_chunk(batch[start : start + self.batch_size])
            for start in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(chunks, axis=0)

    def _embed_chunk(self, chunk) -> np.ndarray:
        failures = 0
        while True:
            self.limiter.wait()
            self.calls += 1
            try:
                return self._check(self.fn(chunk), len(chunk))
            except RetryableError as exc:
                failures += 1
                if failures > self.max_retries:
                    raise NMTuneError(
                        f"{self.name}: gave up after {failures} attempts: {exc}"
                    ) from exc
                delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
                self.sleep(max(delay, min(exc.retry_after or 0.0, self.max_backoff)))

    def _check(self, out, rows: int) -> np.ndarray:
        out = as_float_array(out, f"{self.name} embeddings", ndim=(2,))
        if out.shape[0] != rows:
            raise NMTuneError(f"{self.name} returned {out.shape[0]} embeddings for {rows} inputs")
        if self.feature_dim is None:
            self.feature_dim = int(out.shape[1])
        elif out.shape[1] != self.feature_dim:
            raise NMTuneError(
                f"{self.name} returned {out.shape[1]}-d embeddings, expected {self.feature_dim}"
            )
        return out.astype(np.float32, copy=False)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or HTTP date); ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, default ports made explicit: who may see the key."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return (
        scheme,
        (parts.hostname or "").lower(),
        parts.port or {"http": 80, "https": 443}.get(scheme),
    )


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow only 307/308 redirects within the origin of the request, re-sending the POST.

    A redirect to another scheme, host or port is refused, so the API key never reaches a
    server the user did not name; a 301/302/303 is refused too, since following it would turn
    the POST into a GET that no embeddings endpoint answers.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        fp.close()
        where = f"{req.full_url} redirected (HTTP {code}) to {newurl}"
        if _origin(newurl) != _origin(req.full_url):
            raise NMTuneError(
                f"{where}, another origin: not followed, so the API key is never sent there; "
                "set base_url to the new address if you trust it"
            )
        if code not in (307, 308):
            raise NMTuneError(
                f"{where}: following a {code} would turn the POST into a GET; set base_url to "
                "the final address"
            )
        follow = urllib.request.Request(
            newurl, data=req.data, headers=req.headers, method=req.get_method()
        )
        follow.unredirected_hdrs = dict(req.unredirected_hdrs)  # same origin: the key may go
        return follow


def _json_kind(value) -> str:
    return "null" if value is None else type(value).__name__


class OpenAIEmbeddings:
    """An OpenAI-compatible embeddings endpoint as a function ``list[str] -> (B, D)``.

    Sends ``POST {base_url}/embeddings`` with ``{"model": model, "input": [...]}`` and reads
    ``{"data": [{"embedding": [...], "index": i}, ...]}``, ordered by ``index``; every index
    must be a JSON integer and every embedding value a JSON number (``true``, ``"1.5"`` or
    ``null`` are refused, not converted).
    429, 408 and 5xx answers, timeouts and refused connections raise :class:`RetryableError`
    (honouring ``Retry-After``); other HTTP errors and malformed bodies raise
    :class:`NMTuneError` at once, since repeating the request would not fix them.

    The key never leaves the origin (scheme, host and port) of ``base_url``: a redirect to
    another origin is refused with an error that says so, and only 307/308 redirects within
    the origin are followed.

    Parameters
    ----------
    base_url : str
        Up to and including the API version, e.g. ``"https://api.openai.com/v1"``.
    model : str
    api_key : str or None
        Sent as a bearer token; ``None`` reads ``$OPENAI_API_KEY`` (and sends none if unset).
    timeout : float
        Seconds per request.
    dimensions : int or None
        Requested width, for models that support shortening.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        dimensions: int | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise NMTuneError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = float(timeout)
        self.dimensions = dimensions
        self._opener = urllib.request.build_opener(_SameOriginRedirects)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIEmbeddings(url={self.url!r}, model={self.model!r})"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise NMTuneError("the embeddings API takes a list of str")
        payload = {"model": self.model, "input": texts}
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        body = self._post(json.dumps(payload).encode())
        return self._parse(body, len(texts))

    def _post(self, data: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        if self._api_key:
            # urllib never copies an "unredirected" header onto a redirected request; the
            # redirect handler re-adds it only within the origin.
            request.add_unredirected_header("Authorization", f"Bearer {self._api_key}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            message = f"{self.url} answered HTTP {exc.code}: {detail}"
            if exc.code in RETRYABLE_STATUS:
                retry_after = parse_retry_after(exc.headers.get("Retry-After"))
                raise RetryableError(message, retry_after) from None
            raise NMTuneError(message) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            # Timeouts, resets and truncated answers are transient network failures.
            raise RetryableError(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | ConnectionError):
                raise RetryableError(f"{self.url}: {exc.reason}") from exc
            raise NMTuneError(f"cannot reach {self.url}: {exc.reason}") from None

    def _parse(self, body: bytes, rows: int) -> np.ndarray:
        try:
            items = json.loads(body)["data"]
            indices = [item["index"] for item in items]
            vectors = [item["embedding"] for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise NMTuneError(
                f"{self.url} sent a malformed embeddings body ({type(exc).__name__}: {exc}); "
                f"starts with {body[:120]!r}"
            ) from None
        bad = next((i for i in indices if type(i) is not int), None)
        if bad is not None:
            raise NMTuneError(f"{self.url} sent an index that is not an integer: {bad!r}")
        if sorted(indices) != list(range(rows)):
            raise NMTuneError(
                f"{self.url} returned {len(items)} embeddings with indices not 0..{rows - 1}"
            )
        for index, vector in zip(indices, vectors, strict=True):
            self._check_numbers(index, vector)
        ordered = [vector for _, vector in sorted(zip(indices, vectors, strict=True))]
        try:
            return np.asarray(ordered, dtype=np.float32)
        except ValueError:
            raise NMTuneError(
                f"{self.url} returned embeddings that are not equal-length lists of numbers"
            ) from None

    def _check_numbers(self, index: int, vector) -> None:
        """Refuse anything but JSON numbers: numpy would turn ``true`` into 1 and ``"1.5"`` into
        1.5, silently wrong features."""
        if not isinstance(vector, list):
            raise NMTuneError(
                f"{self.url}: embedding {index} is a {_json_kind(vector)}, not a list of numbers"
            )
        for position, value in enumerate(vector):
            if type(value) not in (int, float):
                raise NMTuneError(
                    f"{self.url}: embedding {index}, position {position}: a {_json_kind(value)} "
                    f"({value!r}), not a JSON number: embeddings must be lists of numbers"
                )


def create_openai(
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    batch_size: int = 64,
    max_requests_per_second: float | None = None,
    timeout: float = 60.0,
) -> CallableBackbone:
    """``openai:MODEL`` in the registry: the embeddings API at ``base_url`` or $OPENAI_BASE_URL."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        raise NMTuneError("openai:MODEL needs base_url= or $OPENAI_BASE_URL (e.g. http://host/v1)")
    api = OpenAIEmbeddings(base_url, model, api_key=api_key, timeout=timeout)
    return CallableBackbone(
        api,
        name=f"openai:{model}",
        identity=f"{api.url}|model={model}",
        modality="text",
        batch_size=batch_size,
        max_requests_per_second=max_requests_per_second,
    )


register_backbone(
    "openai:",
    modality="text",
    description="OpenAI-compatible /v1/embeddings API (base_url= or $OPENAI_BASE_URL)",
)(create_openai)
