"""CallableBackbone (batching, retries, rate bound, checks) and OpenAIEmbeddings against a local
HTTP server on 127.0.0.1 that injects 429s, 5xx, slow answers and malformed bodies."""

import email.utils
import json
import socket
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest

from nmtune._validation import NMTuneError
from nmtune.backbones import CallableBackbone, OpenAIEmbeddings, RetryableError, create_backbone
from nmtune.backbones.blackbox import MinIntervalLimiter, parse_retry_after
from nmtune.data.base import Dataset
from nmtune.features import extract

DIM = 3


def vector(text: str) -> list[float]:
    """What the fake server embeds ``text`` to: easy to recompute in the test."""
    return [float(len(text)), float(sum(map(ord, text)) % 101), float(text.count("a"))]


class FakeEmbeddingServer:
    """``POST /v1/embeddings`` with a queue of scripted faults, then healthy answers.

    Each fault is one of: ``("status", code, headers)``, ``("sleep", seconds)``,
    ``("body", bytes)``, ``("drop", k)`` (k embeddings too few), ``("dim", d)`` (d-wide vectors),
    ``("shuffle",)`` (healthy, data in reverse order).
    """

    def __init__(self):
        self.faults: list[tuple] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                )
                fault = server.faults.pop(0) if server.faults else ("ok",)
                kind = fault[0]
                if kind == "status":
                    self.send_response(fault[1])
                    for k, v in fault[2].items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(b'{"error": "injected"}')
                    return
                if kind == "sleep":
                    time.sleep(fault[1])
                if kind == "body":
                    return self._send(fault[1])
                data = [{"index": i, "embedding": vector(t)} for i, t in enumerate(body["input"])]
                if kind == "drop":
                    data = data[: len(data) - fault[1]]
                if kind == "dim":
                    data = [{**d, "embedding": [0.5] * fault[1]} for d in data]
                if kind == "shuffle":
                    data = data[::-1]
                self._send(
                    json.dumps({"object": "list", "data": data, "model": body["model"]}).encode()
                )

            def _send(self, payload: bytes):
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.handler = Handler

    def inputs_seen(self) -> int:
        return sum(len(r["input"]) for r in self.requests)


@pytest.fixture
def server(local_http):
    srv = FakeEmbeddingServer()
    srv.base_url = f"{local_http(srv.handler).url}/v1"
    return srv


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def api_backbone(server, sleeps=None, timeout=5.0, **kwargs):
    api = OpenAIEmbeddings(server.base_url, "fake-embed", api_key="sk-test", timeout=timeout)
    kwargs = {"batch_size": 4, "max_retries": 3, "backoff": 0.5, **kwargs}
    return CallableBackbone(
        api, "fake", identity="fake-embed@1", sleep=Sleeps() if sleeps is None else sleeps, **kwargs
    )


TEXTS = ["alpha", "banana", "cab", "d", "eagle", "far", "gamma"]
EXPECTED = np.array([vector(t) for t in TEXTS], dtype=np.float32)


def test_healthy_api_batches_and_orders_by_index(server):
    server.faults = [("shuffle",)]
    backbone = api_backbone(server)
    np.testing.assert_array_equal(backbone.embed(TEXTS), EXPECTED)
    assert [len(r["input"]) for r in server.requests] == [4, 3]
    first = server.requests[0]
    assert first["path"] == "/v1/embeddings" and first["model"] == "fake-embed"
    assert first["auth"] == "Bearer sk-test"
    assert backbone.feature_dim == DIM and "sk-test" not in repr(backbone.fn)


def test_429_with_retry_after_and_5xx_are_retried(server):
    server.faults = [
        ("status", 429, {"Retry-After": "2"}),
        ("status", 500, {}),
        ("status", 503, {}),
    ]
    sleeps = Sleeps()
    backbone = api_backbone(server, sleeps)
    np.testing.assert_array_equal(backbone.embed(TEXTS), EXPECTED)
    assert sleeps == [2.0, 1.0, 2.0]  # Retry-After beats the first 0.5 s backoff, then doubling
    assert backbone.calls == 5


def test_slow_answer_times_out_and_is_retried(server):
    server.faults = [("sleep", 1.0)]
    sleeps = Sleeps()
    backbone = api_backbone(server, sleeps, timeout=0.2)
    np.testing.assert_array_equal(backbone.embed(TEXTS[:2]), EXPECTED[:2])
    assert len(sleeps) == 1 and backbone.calls == 2


def test_persistent_server_errors_give_up_with_a_clear_error(server):
    server.faults = [("status", 502, {})] * 10
    backbone = api_backbone(server, max_retries=2)
    with pytest.raises(NMTuneError, match="gave up after 3 attempts.*HTTP 502"):
        backbone.embed(TEXTS)
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "fault,match",
    [
        (("body", b"<html>gateway</html>"), "malformed embeddings body"),
        (("body", b'{"data": [{"embedding": [1, 2, 3]}]}'), "malformed embeddings body"),
        (
            (
                "body",
                json.dumps(
                    {"data": [{"index": i, "embedding": ["x", 2]} for i in range(4)]}
                ).encode(),
            ),
            "lists of numbers",
        ),
        (("drop", 1), "indices not 0..3"),
        (("status", 401, {}), "HTTP 401"),
        (("status", 400, {}), "HTTP 400"),
    ],
)
def test_unfixable_answers_fail_at_once(server, fault, match):
    server.faults = [fault]
    backbone = api_backbone(server)
    with pytest.raises(NMTuneError, match=match):
        backbone.embed(TEXTS)
    assert len(server.requests) == 1, "an answer a retry cannot fix must not be retried"


def test_embedding_width_must_stay_fixed(server):
    server.faults = [("ok",), ("dim", 5)]
    with pytest.raises(NMTuneError, match="returned 5-d embeddings, expected 3"):
        api_backbone(server).embed(TEXTS)
    server.faults = [("dim", 4)]
    with pytest.raises(NMTuneError, match="returned 4-d embeddings, expected 3"):
        api_backbone(server, feature_dim=3).embed(TEXTS[:2])


def test_refused_connection_is_retried_then_reported():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    api = OpenAIEmbeddings(f"http://127.0.0.1:{port}/v1", "m", timeout=1.0)
    sleeps = Sleeps()
    backbone = CallableBackbone(api, "down", identity="m", max_retries=2, backoff=0.1, sleep=sleeps)
    with pytest.raises(NMTuneError, match="gave up after 3 attempts"):
        backbone.embed(["x"])
    assert sleeps == [0.1, 0.2]


def test_failed_extraction_leaves_only_verified_shards_and_resumes(server, tmp_path):
    texts = [f"text number {i} with {'a' * (i % 5)}" for i in range(30)]
    ds = Dataset("toy", "train", texts, np.arange(30) % 2, ("x", "y"), "text", "toy-30")
    server.faults = [("ok",), ("ok",), ("ok",), ("body", b"garbage")]  # shard 0 ok, shard 1 dies
    backbone = api_backbone(server)
    with pytest.raises(NMTuneError, match="malformed"):
        extract(backbone, ds, cache_dir=tmp_path, batch_size=4, shard_rows=12, progress=False)
    (entry,) = tmp_path.iterdir()
    names = sorted(p.name for p in entry.iterdir())
    assert names == ["progress.json", "shard-00000.npy"], "no partial or temporary files"
    progress = json.loads((entry / "progress.json").read_text())
    assert list(progress["shards"]) == ["0"]

    seen = server.inputs_seen()
    fs = extract(backbone, ds, cache_dir=tmp_path, batch_size=4, shard_rows=12, progress=False)
    assert server.inputs_seen() - seen == 30 - 12, "only the rows of unfinished shards are sent"
    np.testing.assert_array_equal(fs.features, np.array([vector(t) for t in texts], np.float32))
    assert fs.meta["cache"] == "resumed"


def test_registry_openai_family(server, monkeypatch):
    backbone = create_backbone("openai:fake-embed", base_url=server.base_url, batch_size=2)
    np.testing.assert_array_equal(backbone.embed(TEXTS[:3]), EXPECTED[:3])
    assert server.requests[0]["model"] == "fake-embed"
    assert "fake-embed" in backbone.identity()
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(NMTuneError, match="OPENAI_BASE_URL"):
        create_backbone("openai:x")
    with pytest.raises(NMTuneError, match="http"):
        OpenAIEmbeddings("ftp://x", "m")


# -- CallableBackbone without HTTP -----------------------------------------------------------


def test_retryable_errors_back_off_exponentially_with_a_cap():
    failures = iter([RetryableError("busy")] * 4)

    def flaky(batch):
        err = next(failures, None)
        if err:
            raise err
        return np.ones((len(batch), 2))

    sleeps = Sleeps()
    backbone = CallableBackbone(
        flaky, "flaky", identity="v", backoff=1.0, max_backoff=3.0, max_retries=4, sleep=sleeps
    )
    assert backbone.embed(["a"]).shape == (1, 2)
    assert sleeps == [1.0, 2.0, 3.0, 3.0]


def test_other_exceptions_propagate_without_retry():
    calls = []

    def broken(batch):
        calls.append(batch)
        raise ValueError("bug in user code")

    with pytest.raises(ValueError, match="bug in user code"):
        CallableBackbone(broken, "b", identity="v").embed(["a", "b"])
    assert len(calls) == 1


@pytest.mark.parametrize(
    "out,match",
    [
        (np.ones((1, 2)), "returned 1 embeddings for 2 inputs"),
        (np.ones(2), "must be 2-D"),
        (np.array([[1.0, np.inf], [0, 0]]), "NaN or infinite"),
        ([["a", "b"], ["c", "d"]], "numeric"),
    ],
)
def test_answers_are_checked(out, match):
    with pytest.raises(NMTuneError, match=match):
        CallableBackbone(lambda b: out, "c", identity="v").embed(["a", "b"])


def test_rate_bound_spaces_requests():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    starts = []

    def fn(batch):
        starts.append(now[0])
        now[0] += 0.1  # each request takes 0.1 s
        return np.zeros((len(batch), 1))

    backbone = CallableBackbone(
        fn,
        "r",
        identity="v",
        batch_size=1,
        max_requests_per_second=4,
        sleep=sleep,
        clock=lambda: now[0],
    )
    backbone.embed(list("abcde"))
    np.testing.assert_allclose(np.diff(starts), 0.25)
    with pytest.raises(NMTuneError, match="positive"):
        MinIntervalLimiter(0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"identity": ""}, "identity"),
        ({"batch_size": 0}, "batch_size"),
        ({"modality": "audio"}, "modality"),
        ({"fn": 3}, "callable"),
    ],
)
def test_constructor_checks(kwargs, match):
    args = {"fn": lambda b: b, "name": "n", "identity": "v", **kwargs}
    with pytest.raises(NMTuneError, match=match):
        CallableBackbone(**args)


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)


# -- redirects never carry the key to another origin -------------------------------------------


class RecordingServer:
    """127.0.0.1 server that records every request's path and headers and answers ``reply``:
    ``(status, headers, body)`` or, when it is a callable, ``reply(path)`` returning that.
    ``local_http`` is the fixture, which stops it when the test ends."""

    def __init__(self, local_http, reply):
        self.seen: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                recorder.seen.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, headers, payload = reply(self.path) if callable(reply) else reply
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _any

        self.origin = local_http(Handler).url


def embeddings_reply(texts=("a",)) -> tuple:
    data = [{"index": i, "embedding": vector(t)} for i, t in enumerate(texts)]
    return 200, {"Content-Type": "application/json"}, json.dumps({"data": data}).encode()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_is_refused_and_the_key_never_leaves(code, local_http):
    thief = RecordingServer(local_http, embeddings_reply())
    victim = RecordingServer(local_http, (code, {"Location": f"{thief.origin}/v1/embeddings"}, b""))
    api = OpenAIEmbeddings(f"{victim.origin}/v1", "m", api_key="sk-secret", timeout=5)
    with pytest.raises(NMTuneError, match="another origin") as info:
        api(["a"])
    assert thief.origin in str(info.value) and "sk-secret" not in str(info.value)
    assert victim.seen[0]["headers"]["Authorization"] == "Bearer sk-secret"
    assert thief.seen == [], "nothing, least of all the key, may reach the other origin"


def test_a_same_origin_307_is_followed_with_the_body_and_the_key(local_http):
    def reply(path):
        if path == "/v1/embeddings":
            return 307, {"Location": "/v2/embeddings"}, b""
        return embeddings_reply(["a", "bb"])

    server = RecordingServer(local_http, reply)
    api = OpenAIEmbeddings(f"{server.origin}/v1", "m", api_key="sk-secret", timeout=5)
    np.testing.assert_array_equal(api(["a", "bb"]), [vector("a"), vector("bb")])
    first, second = server.seen
    assert second["path"] == "/v2/embeddings" and second["body"] == first["body"]
    assert second["headers"]["Authorization"] == "Bearer sk-secret"


def test_a_same_origin_302_would_turn_the_post_into_a_get_and_is_refused(local_http):
    server = RecordingServer(local_http, (302, {"Location": "/elsewhere"}, b""))
    with pytest.raises(NMTuneError, match="302.*base_url"):
        OpenAIEmbeddings(f"{server.origin}/v1", "m", api_key="k", timeout=5)(["a"])
    assert [s["path"] for s in server.seen] == ["/v1/embeddings"]


# -- every embedding value must be a JSON number -----------------------------------------------


@pytest.mark.parametrize(
    "value,what",
    [(True, "bool"), (False, "bool"), ("1.5", "str"), (None, "null"), ([1.0], "list")],
)
def test_embedding_values_that_are_not_json_numbers_are_refused(value, what, local_http):
    body = {"data": [{"index": 0, "embedding": [0.25, value, 3]}]}
    server = RecordingServer(local_http, (200, {}, json.dumps(body).encode()))
    with pytest.raises(NMTuneError, match=rf"embedding 0.*position 1.*{what}"):
        OpenAIEmbeddings(f"{server.origin}/v1", "m", timeout=5)(["a"])


@pytest.mark.parametrize("index", [True, "0", 0.0])
def test_indices_must_be_json_integers(index, local_http):
    body = {"data": [{"index": index, "embedding": [0.25, 1, 3]}]}
    server = RecordingServer(local_http, (200, {}, json.dumps(body).encode()))
    with pytest.raises(NMTuneError, match="index"):
        OpenAIEmbeddings(f"{server.origin}/v1", "m", timeout=5)(["a"])
