"""The embeddings server against hostile clients, over real sockets on 127.0.0.1.

Bursts of 200 connections, a 10 MB body, slow-loris connections, lone surrogates, deeply
nested JSON and unknown methods: every one gets a JSON answer with a client-error status (or a
503 that says when to come back), none a reset, and a well-behaved client is still served in
time. The server runs in this process (fast, and its batcher can be inspected) or, where the
process's memory and the CLI's options are the point, as `nmtune serve-embeddings`.
Timeouts are set to fractions of a second so that the file runs in seconds.
"""

import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nmtune._validation import NMTuneError
from nmtune.backbones import CallableBackbone, OpenAIEmbeddings
from nmtune.cli import main
from nmtune.serve import ServerLimits
from test_blackbox import RecordingServer
from test_serve import CHILD_REGISTERS, MODEL, HashingBackbone, request, server_for

FAST = {"header_timeout": 0.5, "body_timeout": 0.5}


class SlowHashing(HashingBackbone):
    """The hashing backbone, ``delay`` seconds per forward pass (a model busy computing);
    ``gate``, when given, holds the first pass until it is set (``started`` says it began)."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        super().__init__()
        self.delay, self.gate = delay, gate
        self.started = threading.Event()
        self.batches: list[list[str]] = []

    def embed(self, batch):
        self.started.set()
        if self.gate is not None and not self.batches:
            self.gate.wait(10)
        self.batches.append(list(batch))
        time.sleep(self.delay)
        if "boom" in batch:
            raise RuntimeError("cannot embed boom")
        return super().embed(batch)


@pytest.fixture
def serve(local_http):
    def serve(backbone=None, api_key=None, **limits):
        limits = ServerLimits(**{**FAST, **limits})
        return local_http(server_for(backbone or HashingBackbone(), api_key=api_key, limits=limits))

    return serve


def raw_exchange(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes the connection."""
    with socket.create_connection(server.server_address[:2], timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(raw: bytes) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one raw HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def post(server, payload: bytes, timeout: float = 10.0) -> tuple[int, dict, dict, float]:
    """POST ``payload`` to /v1/embeddings: (status, headers, JSON body, seconds taken)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=timeout)
    try:
        conn.request("POST", "/v1/embeddings", payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        return response.status, dict(response.getheaders()), body, time.perf_counter() - started
    finally:
        conn.close()


def embeddings_request(texts) -> bytes:
    return json.dumps({"model": MODEL, "input": texts}).encode()


# --------------------------------------------------------------------------- bursts


def test_a_burst_of_200_connections_is_answered_200_or_503_never_reset(serve):
    server = serve(SlowHashing(delay=0.02), workers=4, queue_size=8, max_batch_inputs=8)
    barrier = threading.Barrier(200)

    def client(i):
        texts = [f"client {i} says hello", f"word{i}"]
        barrier.wait(10)
        try:
            status, headers, body, _ = post(server, embeddings_request(texts))
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, refused, timeout
            return texts, type(exc).__name__, None, None
        return texts, status, headers, body

    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(client, range(200)))
    statuses = [status for _, status, _, _ in answers]
    assert set(statuses) <= {200, 503}, sorted({s for s in statuses if s not in (200, 503)})
    assert statuses.count(200) >= 12 and statuses.count(503) >= 1, statuses.count(200)
    for texts, status, headers, body in answers:
        if status == 503:
            assert headers["Retry-After"] == "1" and body["error"]["type"] == "server_error"
        else:
            got = np.float32([item["embedding"] for item in body["data"]])
            np.testing.assert_array_equal(got, HashingBackbone().embed(texts))


def test_the_client_retries_a_503_and_gets_its_embeddings(serve):
    # One worker and one waiting place, both taken by idle connections (closed after 0.6 s
    # each): the next request is refused, and the client's retry after 1 s is served.
    server = serve(workers=1, queue_size=1, header_timeout=0.6)
    idle = []
    try:
        idle.append(socket.create_connection(server.server_address[:2]))
        time.sleep(0.2)  # the worker takes the first
        idle.append(socket.create_connection(server.server_address[:2]))
        wait_until(lambda: server.connections.qsize() == 1)  # the second waits
        status, headers, _, _ = post(server, embeddings_request(["a"]))
        assert status == 503 and headers["Retry-After"] == "1"
        api = OpenAIEmbeddings(server.url, MODEL, api_key="")
        backbone = CallableBackbone(api, "api", identity="hash", backoff=0.1)
        np.testing.assert_array_equal(backbone.embed(["a b"]), HashingBackbone().embed(["a b"]))
        assert backbone.calls == 2
    finally:
        for sock in idle:
            sock.close()


def hold_the_model(server, backbone, pool) -> None:
    """Send a first request and return once the model is busy with it (held by the gate)."""
    pool.submit(post, server, embeddings_request(["first"]))
    assert backbone.started.wait(5)


def wait_until(condition) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.01)


def wait_for_queued(server, count: int) -> None:
    wait_until(lambda: _waiting(server) >= count)


def test_concurrent_requests_share_one_forward_pass(serve):
    gate = threading.Event()
    backbone = SlowHashing(gate=gate)
    server = serve(backbone, max_batch_inputs=64)
    batches = [[f"request {i} text {j}" for j in range(i % 3 + 1)] for i in range(10)]
    with ThreadPoolExecutor(11) as pool:
        hold_the_model(server, backbone, pool)
        rest = [pool.submit(post, server, embeddings_request(b)) for b in batches]
        wait_for_queued(server, len(batches))
        gate.set()
        answers = [f.result() for f in rest]
    # One pass for "first", one for all ten that queued behind it.
    assert len(backbone.batches) == 2 and sorted(backbone.batches[1]) == sorted(sum(batches, []))
    for texts, (status, _, body, _) in zip(batches, answers, strict=True):
        assert status == 200
        got = np.float32([item["embedding"] for item in body["data"]])
        np.testing.assert_array_equal(got, HashingBackbone().embed(texts))


def _waiting(server) -> int:
    """Requests queued at the model, not yet taken into a pass."""
    return server.batcher.waiting()


def test_one_failing_request_in_a_shared_pass_fails_alone(serve):
    gate = threading.Event()
    backbone = SlowHashing(gate=gate)
    server = serve(backbone)
    with ThreadPoolExecutor(3) as pool:
        hold_the_model(server, backbone, pool)
        others = [pool.submit(post, server, embeddings_request(t)) for t in (["ok one"], ["boom"])]
        wait_for_queued(server, 2)
        gate.set()
        (ok, _, ok_body, _), (bad, _, bad_body, _) = (f.result() for f in others)
    assert ok == 200 and bad == 500 and "cannot embed boom" in bad_body["error"]["message"]
    assert ["ok one", "boom"] in (backbone.batches[1], backbone.batches[1][::-1])  # shared, failed
    np.testing.assert_array_equal(
        ok_body["data"][0]["embedding"], HashingBackbone().embed(["ok one"])[0]
    )


def test_a_small_request_joins_the_passes_of_a_big_one_instead_of_waiting(serve):
    backbone = SlowHashing(delay=0.05)
    server = serve(backbone, max_batch_inputs=16)
    big = [f"big text {i}" for i in range(320)]  # 20 passes of 16 when alone: >= 1 s
    with ThreadPoolExecutor(2) as pool:
        big_answer = pool.submit(post, server, embeddings_request(big))
        wait_until(lambda: len(backbone.batches) >= 2)
        status, _, body, seconds = post(server, embeddings_request(["small one"]))
        assert status == 200 and not big_answer.done()
        assert seconds < 0.5, f"the small request waited {seconds:.2f} s"
        big_status, _, big_body, _ = big_answer.result()
    shared = next(b for b in backbone.batches if "small one" in b)
    assert len(shared) == 16 and sum(t.startswith("big") for t in shared) == 15
    np.testing.assert_array_equal(
        body["data"][0]["embedding"], HashingBackbone().embed(["small one"])[0]
    )
    got = np.float32([item["embedding"] for item in big_body["data"]])
    assert big_status == 200
    np.testing.assert_array_equal(got, HashingBackbone().embed(big))


# --------------------------------------------------------------------------- big requests


def test_a_10mb_body_is_refused_at_once_while_a_small_request_is_served(serve):
    server = serve()
    huge = embeddings_request(["x" * 10_000_000])
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(post, server, huge)
        small = pool.submit(post, server, embeddings_request(["the cat sat"]))
        (status, _, body, seconds), (ok, _, ok_body, ok_seconds) = big.result(), small.result()
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert str(ServerLimits().max_body_bytes) in body["error"]["message"]
    assert seconds < 1.0 and ok == 200 and ok_seconds < 1.0
    np.testing.assert_array_equal(
        ok_body["data"][0]["embedding"], HashingBackbone().embed(["the cat sat"])[0]
    )


@pytest.mark.parametrize(
    ("texts", "code", "match"),
    [
        (["a" * 101], "input_too_long", "'input\\[0\\]' has 101 characters; at most 100"),
        (["ok", "b" * 101], "input_too_long", "'input\\[1\\]'"),
        (["a"] * 6, None, "holds 6 items; at most 5"),
    ],
)
def test_inputs_over_the_limits_get_400_before_the_model(serve, texts, code, match):
    backbone = SlowHashing()
    server = serve(backbone, max_input_chars=100, max_inputs=5)
    status, _, body, _ = post(server, embeddings_request(texts))
    assert status == 400 and body["error"]["code"] == code and body["error"]["param"] == "input"
    assert re.search(match, body["error"]["message"])
    assert backbone.batches == []
    assert post(server, embeddings_request(["a" * 100] * 5))[0] == 200  # the limits are inclusive


def test_a_big_request_runs_in_bounded_forward_passes(serve):
    backbone = SlowHashing()
    server = serve(backbone, max_batch_inputs=16)
    texts = [f"{'w ' * (i % 7)}text {i}" for i in range(50)]
    status, _, body, _ = post(server, embeddings_request(texts))
    assert status == 200 and [len(b) for b in backbone.batches] == [16, 16, 16, 2]
    got = np.float32([item["embedding"] for item in body["data"]])
    np.testing.assert_array_equal(got, HashingBackbone().embed(texts))  # order restored


# --------------------------------------------------------------------------- malformed input


def nested(depth: int) -> bytes:
    return (
        json.dumps({"model": MODEL, "input": "@"})
        .replace('"@"', "[" * depth + "]" * depth)
        .encode()
    )


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b'{"model": "%s", "input": ["ok", "\\ud800 lone"]}' % MODEL.encode(), "lone surrogate"),
        (b'{"model": "%s", "input": "\\udfff"}' % MODEL.encode(), "lone surrogate"),
        (nested(50_000), "nested too deeply"),
        (b"[" * 50_000, "JSON"),
    ],
)
def test_invalid_text_and_deep_nesting_are_400(serve, payload, match):
    backbone = SlowHashing()
    server = serve(backbone)
    status, _, body, _ = post(server, payload)
    assert status == 400 and match in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error" and backbone.batches == []
    assert post(server, embeddings_request(["still fine"]))[0] == 200


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_unsupported_methods_are_405_with_a_json_body(serve, method):
    server = serve()
    status, body = request(server, method, "/v1/embeddings", {"model": MODEL, "input": ["a"]})
    assert status == 405 and "GET or POST" in body["error"]["message"]
    raw = raw_exchange(server, f"{method} /v1/models HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, headers, body = parse_answer(raw)
    assert status == 405 and headers["Allow"] == "GET, POST" and body["error"]["message"]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/models HTTP/9.9\r\n\r\n", 505),
        (b"GET /v1/models HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 411),
        (b"POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    ],
)
def test_http_level_refusals_answer_in_json(serve, data, status):
    got, headers, body = parse_answer(raw_exchange(serve(), data))
    assert got == status and headers["Content-Type"] == "application/json"
    assert body["error"]["message"]


# --------------------------------------------------------------------------- slow clients


def trickle(sockets: list[socket.socket], prefix: bytes, seconds: float) -> dict:
    """Send ``prefix`` on every socket, then one byte each per 0.05 s for up to ``seconds``;
    returns {socket: (seconds until the server closed it, what it sent)} for those it closed."""
    started = time.perf_counter()
    for sock in sockets:
        sock.sendall(prefix)
    received = {sock: b"" for sock in sockets}
    closed = {}
    while len(closed) < len(sockets) and time.perf_counter() - started < seconds:
        for sock in [s for s in sockets if s not in closed]:
            try:
                sock.send(b"a")
            except OSError:
                pass
        readable, _, _ = select.select([s for s in sockets if s not in closed], [], [], 0.05)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            received[sock] += chunk
            if not chunk:
                closed[sock] = (time.perf_counter() - started, received[sock])
    return closed


@pytest.mark.parametrize(
    ("prefix", "timeout"),
    [
        (b"POST /v1/embeddings HTTP/1.1\r\nX-Slow: ", "header_timeout"),
        (b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", "body_timeout"),
    ],
)
def test_slow_loris_connections_are_closed_by_the_timeout(serve, prefix, timeout):
    server = serve(workers=20, queue_size=64)
    sockets = [socket.create_connection(server.server_address[:2]) for _ in range(40)]
    try:
        closed = trickle(sockets, prefix, seconds=5.0)
        assert len(closed) == 40, f"{40 - len(closed)} slow connections still open after 5 s"
        for _, sent in closed.values():
            status, _, body = parse_answer(sent)
            # 20 at a time hold a worker until their deadline (0.5 s) and get 408; the others
            # wait their turn (their deadline starts when a worker takes them up).
            assert status == 408 and f"{timeout.split('_')[0]}" in body["error"]["message"]
        assert max(s for s, _ in closed.values()) < 40 / 20 * 0.5 + 1.5
        # Meanwhile the server still answers a well-behaved client.
        assert post(server, embeddings_request(["hello"]))[0] == 200
    finally:
        for sock in sockets:
            sock.close()


def test_an_idle_keepalive_connection_is_closed_without_an_answer(serve):
    server = serve()
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        started = time.perf_counter()
        assert sock.recv(100) == b""
        assert 0.4 < time.perf_counter() - started < 2.0


# --------------------------------------------------------------------------- the CLI server


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    """`nmtune serve-embeddings` on the hashing backbone, small limits, key from the environment."""
    code = CHILD_REGISTERS + "from nmtune.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["serve-embeddings", "--backbone", "hash-embed", "--port", "0", "--model-name", MODEL]
    args += ["--workers", "4", "--queue-size", "16", "--max-body-bytes", "2000000"]
    args += ["--header-timeout", "0.5", "--body-timeout", "0.5"]
    env = {**os.environ, "NMTUNE_API_KEY": "sk-from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        assert "with an API key" in line, line
        url = line.split(" at ")[1].split()[0]
        host, port = url.split("//")[1].split("/")[0].split(":")
        yield proc, url, (host, int(port))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


class Address:
    def __init__(self, address):
        self.server_address = address


@pytest.mark.slow
def test_cli_reads_the_key_from_the_environment(cli_server):
    _, url, _ = cli_server
    with pytest.raises(NMTuneError, match="401"):
        OpenAIEmbeddings(url, MODEL, api_key="")(["a"])
    got = OpenAIEmbeddings(url, MODEL, api_key="sk-from-env")(["a b"])
    np.testing.assert_array_equal(got, HashingBackbone().embed(["a b"]))


@pytest.mark.slow
def test_cli_server_memory_stays_bounded_under_big_requests(cli_server):
    proc, url, address = cli_server
    server = Address(address)
    baseline = vm_kib(proc.pid, "VmRSS")
    auth = {"Authorization": "Bearer sk-from-env", "Content-Type": "application/json"}
    # 1.9 MB accepted bodies (few words, so the hashing model is quick) and 10 MB refused ones.
    allowed = json.dumps({"model": MODEL, "input": ["y" * 30_000] * 63}).encode()
    refused = embeddings_request(["x" * 10_000_000])

    def send(payload):
        conn = http.client.HTTPConnection(*address, timeout=20)
        try:
            conn.request("POST", "/v1/embeddings", payload, auth)
            return conn.getresponse().status
        except OSError as exc:
            return type(exc).__name__
        finally:
            conn.close()

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(send, [allowed, refused] * 12))
    assert set(statuses[1::2]) <= {413, 503} and 413 in statuses[1::2]
    assert set(statuses[0::2]) <= {200, 503} and 200 in statuses[0::2]
    grown_mib = (vm_kib(proc.pid, "VmHWM") - baseline) / 1024
    # 4 workers x ~3 x 2 MB of request state at most, plus the allocator's slack.
    assert grown_mib < 150, f"the server grew by {grown_mib:.0f} MiB"
    assert post(server, b"{}", timeout=5)[0] == 401  # still answering


@pytest.mark.slow
def test_cli_slow_loris_gets_the_configured_timeout(cli_server):
    _, _, address = cli_server
    sockets = [socket.create_connection(address) for _ in range(4)]
    try:
        closed = trickle(sockets, b"GET /v1/models HTTP/1.1\r\nX-Slow: ", seconds=3.0)
        assert len(closed) == 4 and max(s for s, _ in closed.values()) < 1.5
    finally:
        for sock in sockets:
            sock.close()


def test_cli_key_options(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "key"
    empty.write_text("\n")
    assert main(["serve-embeddings", "--api-key-file", str(empty), "--port", "0"]) == 2
    assert "is empty" in capsys.readouterr().err
    missing = tmp_path / "nope"
    assert main(["serve-embeddings", "--api-key-file", str(missing), "--port", "0"]) == 2
    assert "cannot read --api-key-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve-embeddings", "--api-key", "a", "--api-key-file", str(empty)])
    assert "not allowed with" in capsys.readouterr().err
    assert main(["serve-embeddings", "--workers", "0", "--port", "0"]) == 2
    assert "workers must be a positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve-embeddings", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "WARNING: every local user can read a command line" in help_text
    assert "NMTUNE_API_KEY" in help_text and "--max-body-bytes" in help_text


def test_key_file_is_used_over_the_environment(tmp_path, monkeypatch):
    from nmtune.cli import build_parser
    from nmtune.cli.serve_embeddings import api_key

    monkeypatch.setenv("NMTUNE_API_KEY", "from-env")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\nsecond line ignored\n")
    parse = build_parser().parse_args
    assert api_key(parse(["serve-embeddings", "--api-key-file", str(key_file)])) == "from-file"
    assert api_key(parse(["serve-embeddings"])) == "from-env"
    monkeypatch.delenv("NMTUNE_API_KEY")
    assert api_key(parse(["serve-embeddings"])) is None


def test_server_limits_are_checked():
    for bad in ({"workers": 0}, {"max_body_bytes": -1}, {"header_timeout": 0}, {"workers": 1.5},
                {"workers": 100_000}, {"body_timeout": float("inf")}, {"queue_size": 10**9}):
        with pytest.raises(NMTuneError, match=next(iter(bad))):
            ServerLimits(**bad)


# --------------------------------------------------------------------------- redirects


def test_a_redirect_to_a_real_server_on_another_port_never_delivers_the_key(serve, local_http):
    # The nmtune server on one port, a redirector on another (another origin): were the
    # client to follow with its key, this keyed server would embed the text.
    backbone = SlowHashing()
    server = serve(backbone, api_key="sk-secret")
    redirector = RecordingServer(local_http, (307, {"Location": f"{server.url}/embeddings"}, b""))
    api = OpenAIEmbeddings(f"{redirector.origin}/v1", MODEL, api_key="sk-secret")
    with pytest.raises(NMTuneError, match="another origin: not followed"):
        api(["a"])
    assert backbone.batches == [] and redirector.seen[0]["path"] == "/v1/embeddings"
    direct = OpenAIEmbeddings(server.url, MODEL, api_key="sk-secret")(["a"])  # the key works
    np.testing.assert_array_equal(direct, HashingBackbone().embed(["a"]))


def test_stopping_waits_for_the_forward_pass_in_progress():
    # Exiting while the model thread is inside a pass killed a real server with
    # "terminate called without an active exception"; stop() must let the pass end first.
    from nmtune.serve.batcher import MicroBatcher

    started = threading.Event()

    def slow_embed(texts):
        started.set()
        time.sleep(0.5)
        return np.ones((len(texts), 4), dtype=np.float32)

    batcher = MicroBatcher(CallableBackbone(slow_embed, "slow", identity="slow"), 8)
    waiter = threading.Thread(target=lambda: batcher.embed(["a", "b"]), daemon=True)
    waiter.start()
    assert started.wait(5)
    late = []  # a request still queued when the server stops is told to come back: 503
    threading.Thread(target=lambda: late.append(_error_of(batcher.embed, ["c"])),
                     daemon=True).start()
    time.sleep(0.1)
    batcher.stop()
    assert not batcher.running
    time.sleep(0.1)
    assert late and getattr(late[0], "status", None) == 503, late


def _error_of(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # the test inspects what a request would be answered
        return exc
    return None
