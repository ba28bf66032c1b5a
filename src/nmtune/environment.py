"""What a run's numbers depended on: CPU, BLAS, thread counts, library versions, determinism.

Floating-point results are bit-identical only on the same CPU model, BLAS build and thread
counts (a different reduction order changes the last bits, and training amplifies them); across
machines they agree only within the seed-to-seed spread. :func:`environment` records all of it
so that ``study.json`` says which case two runs are in, and ``nmtune compare`` can show it.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

__all__ = ["environment", "pinned_threads"]

#: Distributions whose versions change numbers.
LIBRARIES = ("nmtune", "numpy", "scipy", "scikit-learn", "pandas", "torch", "statsmodels")
#: Environment variables that set thread counts of OpenMP and the BLAS libraries.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def environment() -> dict:
    """A JSON-ready record of the machine and software a run depends on.

    Returns
    -------
    dict
        ``cpu`` (model, architecture, logical CPUs, CPUs this process may use), ``platform``,
        ``python``, ``libraries`` (name -> version or None), ``blas`` (one entry per loaded
        threadpool, from threadpoolctl: library, version, threads, architecture),
        ``thread_variables`` (the ones set), and ``torch`` (threads and deterministic-algorithm
        settings).
    """
    torch = _torch_settings()  # first: importing torch loads the OpenMP pool threadpoolctl lists
    return {
        "cpu": {
            "model": _cpu_model(),
            "machine": platform.machine(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
        },
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "blas": _threadpools(),
        "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "torch": torch,
    }


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` compute threads in torch and every BLAS/OpenMP pool.

    The number of threads sets the order of floating-point reductions, so it is part of what
    a result depends on: pinning it (rather than inheriting ``OMP_NUM_THREADS``) makes a run
    bit-identical on another machine of the same kind. Restores the previous counts on exit.
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    try:
        with threadpool_limits(limits=threads):
            torch.set_num_threads(threads)  # after threadpoolctl: torch's own intra-op pool
            yield
    finally:
        torch.set_num_threads(before)


def _cpu_model() -> str:
    try:  # Linux names the model here; platform.processor() is often empty or just "x86_64"
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _threadpools() -> list[dict]:
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture",
            "threading_layer")
    pools = [{k: pool.get(k) for k in keys} for pool in threadpool_info()]
    # threadpoolctl lists pools in library load order, which varies between runs of one
    # program; a fixed order lets two records be compared entry by entry.
    return sorted(pools, key=lambda pool: [str(pool[k]) for k in keys[:4]])


def _torch_settings() -> dict:
    import torch

    return {
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
