"""Fixtures shared by the test files.

- Every test runs with one torch intra-op thread (:func:`one_thread`).
- :func:`run_cli` runs ``nmtune ARGV`` in this process and returns its status and output;
  :func:`child_env` is the environment for tests that run it in a child interpreter.
- :func:`local_http` serves an HTTP handler or server on 127.0.0.1 for the length of a test.
- :func:`tiny_study` is the smallest study config that still crosses two noise ratios with
  three methods and an OOD set.

Tests that take longer than a few seconds (several processes, or a whole study run more than
once) carry ``@pytest.mark.slow``: ``python -m pytest -q -m "not slow"`` is the fast loop, CI
runs everything.
"""

from __future__ import annotations

import copy
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nmtune.cli import main

TINY_STUDY = {
    "name": "tiny",
    "seeds": [0],
    "backbone": {"name": "resnet8", "kwargs": {"width": 4}},
    "pretrain": {"dataset": "digits", "epochs": 2, "batch_size": 64, "eval_split": "test"},
    "noise": {"kind": "symmetric", "ratios": [0.0, 0.3]},
    "tasks": [{
        "name": "digits",
        "train": {"dataset": "digits", "split": "train", "limit": 300},
        "test": {"dataset": "digits", "split": "test", "limit": 200},
        "ood": {"rotated": {"dataset": "digits~rotate30", "split": "test", "limit": 200}},
    }],
    "methods": {"lp": {"Cs": 3}, "mlp": {"epochs": 2}, "nmtune": {"epochs": 2}},
}


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch intra-op thread for the whole run, as in the child processes tests start.

    Exact comparisons between processes need equal thread counts, and these tensors are tiny:
    on a shared 2-core machine a second OpenMP thread mostly waits for the first.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv) -> (status, stdout, stderr)`` of ``nmtune`` run in this process."""

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def child_env() -> dict:
    """Environment for an ``nmtune`` child process: one OpenMP thread (as :func:`one_thread`
    gives this one, so results compare exactly) and unbuffered output (read while it runs)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def local_http():
    """``local_http(handler_class_or_server)`` serves it on 127.0.0.1 in a daemon thread until
    the test ends, and returns the server.

    A ``BaseHTTPRequestHandler`` subclass gets a ``ThreadingHTTPServer`` on a free port, its
    ``url`` set to ``http://127.0.0.1:PORT``; a server already bound
    (``nmtune.serve.make_server(..., port=0)``, which has its own ``url``) is served as it is.
    """
    servers = []

    def serve(handler_or_server):
        server = handler_or_server
        if isinstance(server, type) and issubclass(server, BaseHTTPRequestHandler):
            server = ThreadingHTTPServer(("127.0.0.1", 0), server)
            server.daemon_threads = True
            server.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def tiny_study() -> dict:
    """A deep copy of :data:`TINY_STUDY` (session-wide: copy it before changing nested entries)."""
    return copy.deepcopy(TINY_STUDY)

def synthetic_results(seeds=(0, 1, 2, 3, 4), shift=None, spread=0.01, rng_seed=0):
    """A results.csv table as ``nmtune study`` writes it, with known effects.

    Slight noise (5-10%) adds 1 point ID, the highest ratio (30%) removes 3 points OOD, NMTune
    adds 2 points over LP and 1 over MLP; each (seed, task) adds a shared offset with SD
    ``spread`` and each row independent noise of a quarter of that. ``shift`` maps a column
    filter (dict) to points added to the matching rows (a doctored run).
    """
    rng = np.random.default_rng(rng_seed)
    evaluations = [("mnist", "id", "mnist/train[2000]", "mnist/test[2000]"),
                   ("mnist->rotated", "ood", "mnist/train[2000]", "mnist~rotate30/test[2000]"),
                   ("digits", "id", "digits/train", "digits/test")]
    effect = {0.0: (0, 0), 0.05: (1, -1), 0.1: (1, -2), 0.3: (-1, -3)}  # (ID, OOD) points
    gain = {"lp": 0.0, "mlp": 1.0, "nmtune": 2.0}
    offsets = {(s, t): rng.normal(0, spread) for s in seeds for t, *_ in evaluations}
    rows = []
    for seed, (task, kind, train, test), ratio, method in itertools.product(
            seeds, evaluations, effect, gain):
        acc = 0.80 + (effect[ratio][kind == "ood"] + gain[method]) / 100
        acc += offsets[seed, task] + rng.normal(0, spread / 4)
        rows.append({"noise_type": "symmetric", "noise_ratio": ratio, "seed": seed,
                     "task": task, "kind": kind, "train_set": train, "test_set": test,
                     "method": method, "protocol": "last-epoch", "accuracy": acc,
                     "chance": 0.11})
    df = pd.DataFrame(rows)
    for where, points in (shift or {}).items():
        mask = np.logical_and.reduce([df[c] == v for c, v in where])
        df.loc[mask, "accuracy"] += points / 100
    return df


@pytest.fixture
def make_results():
    return synthetic_results


def start_study(config: Path, out: Path, env: dict) -> subprocess.Popen:
    """``nmtune study CONFIG --out OUT`` in a child interpreter (so it can be SIGKILLed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nmtune", "study", str(config), "--out", str(out), "--quiet",
         "--no-report"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_then_resume(config: Path, out: Path, env: dict) -> None:
    """Start a study, SIGKILL it once its first model is trained and its tuning cells have
    begun (mid-study), check it left no table, then run it again to the end."""
    proc = start_study(config, out, env)
    deadline = time.time() + 300
    while not list(out.glob("cells/tune-*.json")) and time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("the study finished before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.csv").exists()
    resumed = start_study(config, out, env)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()


#: Columns that differ between runs by nature (wall time); everything else must match exactly.
TIMING = ["fit_seconds", "seconds"]


def results_table(out: Path, name: str = "results") -> pd.DataFrame:
    """``OUT/NAME.csv`` without its timing columns, rows in a fixed order: comparable across
    runs of one study."""
    df = pd.read_csv(out / f"{name}.csv").drop(columns=TIMING, errors="ignore")
    return df.sort_values(list(df.columns)).reset_index(drop=True)
