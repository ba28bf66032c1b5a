"""The embeddings server (``nmtune serve-embeddings``) against a bare ``embed()`` loop.

One backbone (the packaged all-MiniLM-L6-v2 by default), two ways, in the same run:

- *bare*: this process calls ``backbone.embed(request)`` for one request after another, the
  most a caller of the model could get without a server (one forward pass per request),
  measured again right before each server setting so that both see the same machine load;
- *server*: ``nmtune serve-embeddings`` in a subprocess (its own copy of the same model, the
  same thread settings) answers 1, 8 and 64 concurrent clients, each on its own keep-alive
  connection sending one request after another.

Every request holds ``--texts`` sentences. For each setting it prints requests/s, the p50
and p99 latency of a request, and the ratio of the server's requests/s to the bare loop's:
below 1 is what HTTP, JSON and the queue cost; above 1 is what coalescing concurrent requests
into shared forward passes gains. The server's answers are checked against the bare
embeddings (max abs difference), so a fast wrong answer cannot pass.

Run: ``python benchmarks/bench_serve.py`` (about 1-2 minutes on 2 cores); ``--quick`` for a
smoke run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from nmtune.backbones import create_backbone

WORDS = (
    "the a model label noise pre training data set shift feature linear probe image text "
    "caption web scale frozen backbone tune downstream task accuracy spectrum singular value "
    "cat dog market river music sport weather city night morning"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded sentences of 8 to 24 words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(8, 25))) for _ in range(n)]


def bare_loop(backbone, requests: list[list[str]]) -> tuple[float, list[float], np.ndarray]:
    """Requests/s, per-request seconds and the embeddings of one ``embed`` per request."""
    latencies, out = [], []
    started = time.perf_counter()
    for texts in requests:
        t = time.perf_counter()
        out.append(backbone.embed(texts))
        latencies.append(time.perf_counter() - t)
    return len(requests) / (time.perf_counter() - started), latencies, np.concatenate(out)


def start_server(backbone: str, options: list[str]) -> tuple[subprocess.Popen, str, int, str]:
    command = ["serve-embeddings", "--backbone", backbone, "--port", "0", *options]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmtune", *command],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "NMTUNE_API_KEY"},  # no key
    )
    line = proc.stdout.readline()
    model = line.split()[1]
    host, port = line.split(" at ")[1].split()[0].split("//")[1].split("/")[0].split(":")
    return proc, host, int(port), model


def client_run(address, model, requests, clients: int):
    """Requests/s, latencies and embeddings with ``clients`` threads sharing ``requests``."""
    latencies: list[float] = []
    answers: dict[int, np.ndarray] = {}
    statuses: list[int] = []
    next_index = iter(range(len(requests)))
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection(*address, timeout=120)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            body = json.dumps({"model": model, "input": requests[i]}).encode()
            t = time.perf_counter()
            conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            seconds = time.perf_counter() - t
            with lock:
                statuses.append(response.status)
                latencies.append(seconds)
                if response.status == 200:
                    answers[i] = np.float32([d["embedding"] for d in payload["data"]])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ok = statuses.count(200)
    embeddings = (
        np.concatenate([answers[i] for i in sorted(answers)]) if ok == len(requests) else None
    )
    return ok / elapsed, latencies, embeddings, len(statuses) - ok


def ms(latencies: list[float], q: float) -> float:
    return 1000 * float(np.quantile(latencies, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--texts", type=int, default=1, help="sentences per request")
    parser.add_argument("--requests", type=int, default=384, help="requests per setting")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument(
        "--server-options", default="", help="extra serve-embeddings options, e.g. '--workers 64'"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests = 64
    pool = sentences(args.requests * args.texts)
    requests = [pool[i : i + args.texts] for i in range(0, len(pool), args.texts)]

    backbone = create_backbone(args.backbone)
    backbone.embed(requests[0])  # warm-up
    proc, host, port, model = start_server(args.backbone, args.server_options.split())
    try:
        client_run((host, port), model, requests[:16], 4)  # warm-up
        threads = os.environ.get("OMP_NUM_THREADS", "default")
        print(
            f"backbone {args.backbone}, {args.texts} sentence(s) per request, "
            f"{len(requests)} requests per setting, OMP_NUM_THREADS={threads}; the bare loop "
            "runs again just before each server setting (the machine is shared)"
        )
        print(
            "| clients | req/s | p50 ms | p99 ms | bare req/s | bare p50 | ratio | max abs diff |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for clients in args.clients:
            bare_rps, bare_lat, reference = bare_loop(backbone, requests)
            rps, lat, got, refused = client_run((host, port), model, requests, clients)
            diff = "n/a" if got is None else f"{float(np.abs(got - reference).max()):.1e}"
            print(
                f"| {clients} | {rps:.1f} | {ms(lat, 0.5):.1f} | {ms(lat, 0.99):.1f} | "
                f"{bare_rps:.1f} | {ms(bare_lat, 0.5):.1f} | {rps / bare_rps:.2f} | {diff} |"
                + (f" ({refused} not 200)" if refused else "")
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
