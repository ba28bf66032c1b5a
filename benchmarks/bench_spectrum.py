"""Streaming spectrum (``nmtune.spectrum``) vs ``numpy.linalg.svd``: values, time, peak memory.

Both sides see the same row-normalised, column-centred float64 matrix (numpy's time excludes
building it). Accuracy is reported as the largest difference relative to σ₁ and the largest
per-value relative difference over values above 1e-6·σ₁ (smaller ones are rounding noise in
both routes). Peak memory is each route's extra resident memory (VmHWM after resetting it,
minus VmRSS before the call) in a fresh subprocess, so one measurement cannot inflate another.

The streaming route's time at the large size includes generating the features (a D×D matmul
per batch), as a model producing them would.

Run: ``python benchmarks/bench_spectrum.py`` (6-8 minutes on 2 cores, about 4 GiB at peak);
``--quick`` for a smoke run at small sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nmtune.spectrum import singular_values, singular_values_from_batches

GIB = 1 << 30
#: Memory routes at the large size: how the input exists, and what computes the values.
ROUTES = {
    "stream": "singular_values_from_batches (rows generated batch by batch, never all held)",
    "nmtune": "singular_values on the in-memory float32 matrix",
    "numpy": "numpy.linalg.svd on the prepared float64 matrix",
}


def feature_batches(n: int, d: int, seed: int = 0, rows: int = 8192) -> Iterator[np.ndarray]:
    """Seeded ReLU-like features (correlated, non-negative, large common mean), float32."""
    rng = np.random.default_rng(seed)
    mix = (rng.normal(size=(d, d)) / np.sqrt(d)).astype(np.float32)
    bias = rng.normal(0.5, 0.5, size=d).astype(np.float32)
    for start in range(0, n, rows):
        g = np.random.default_rng([seed, start]).standard_normal((min(rows, n - start), d),
                                                                 dtype=np.float32)
        yield np.maximum(g @ mix + bias, 0.0)


def prepared(X: np.ndarray) -> np.ndarray:
    """The matrix numpy's SVD sees: float64, rows L2-normalised, columns centred."""
    Z = X.astype(np.float64)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    Z -= Z.mean(axis=0)
    return Z


def compare(stream: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(max |Δ| / σ₁, max |Δ| / σ_i over σ_i > 1e-6·σ₁)."""
    diff = np.abs(stream - exact)
    big = exact > 1e-6 * exact[0]
    return float(diff.max() / exact[0]), float(np.max(diff[big] / exact[big]))


def timed(fn, *args, repeat: int = 1, **kw) -> tuple[np.ndarray, float]:
    """``fn(*args, **kw)`` and its best wall time over ``repeat`` runs (robust to other load)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t0)
    return out, best


def accuracy_and_time(sizes: list[tuple[int, int]], repeat: int) -> None:
    print(f"Values and time (best of {repeat} runs)")
    print("| N × D | nmtune stream (s) | numpy svd (s) | numpy / stream | max Δ/σ₁ "
          "| max Δ/σᵢ (σᵢ > 1e-6 σ₁) |")
    print("|---|---|---|---|---|---|")
    singular_values(np.ones((64, 8)) + np.eye(64, 8))  # load BLAS outside the timings
    for n, d in sizes:
        X = np.concatenate(list(feature_batches(n, d)))
        s_stream, t_stream = timed(singular_values, X, repeat=repeat)
        Z = prepared(X)
        s_numpy, t_numpy = timed(np.linalg.svd, Z, compute_uv=False, repeat=repeat)
        to_top, per_value = compare(s_stream, s_numpy)
        print(f"| {n:,} × {d} | {t_stream:.2f} | {t_numpy:.2f} | {t_numpy / t_stream:.1f}× "
              f"| {to_top:.1e} | {per_value:.1e} |")


# ----------------------------------------------------------------------- memory (subprocesses)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _child(route: str, n: int, d: int, out: str) -> None:
    """Run one route in this fresh process; print its extra peak memory and time as JSON."""
    if route == "stream":
        source = feature_batches(n, d)
        run = lambda: singular_values_from_batches(source)  # noqa: E731
    elif route == "nmtune":
        X = np.concatenate(list(feature_batches(n, d)))
        run = lambda: singular_values(X)  # noqa: E731
    else:
        Z = prepared(np.concatenate(list(feature_batches(n, d))))
        run = lambda: np.linalg.svd(Z, compute_uv=False)  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    values, seconds = timed(run)
    extra = (_status_kib("VmHWM") - before) * 1024
    np.save(out, values)
    print(json.dumps({"extra_bytes": extra, "seconds": seconds}))


def memory(n: int, d: int) -> None:
    print(f"\nPeak extra memory at {n:,} × {d} (input float32 {n * d * 4 / GIB:.2f} GiB, "
          f"prepared float64 {n * d * 8 / GIB:.2f} GiB, Gram {d * d * 8 / 2**20:.0f} MiB)")
    print("| route | N | extra peak RSS | time (s) |")
    print("|---|---|---|---|")
    values = {}
    # The streaming route also runs at N/4: an unchanged peak shows memory independent of N.
    runs = [("stream", n // 4)] + [(route, n) for route in ROUTES]
    with tempfile.TemporaryDirectory() as tmp:
        for route, rows in runs:
            out = f"{tmp}/{route}-{rows}.npy"
            cmd = [sys.executable, __file__, "--child", route, str(rows), str(d), out]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout)
            values[route] = np.load(out)
            print(f"| {ROUTES[route]} | {rows:,} | {res['extra_bytes'] / 2**20:,.0f} MiB "
                  f"| {res['seconds']:.1f} |")
    for route in ("stream", "nmtune"):
        to_top, per_value = compare(values[route], values["numpy"])
        print(f"{route} vs numpy at this size: max Δ/σ₁ {to_top:.1e}, "
              f"max Δ/σᵢ (σᵢ > 1e-6 σ₁) {per_value:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds not minutes")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timing runs per size in the first table; the best is kept")
    parser.add_argument("--child", nargs=4, metavar=("ROUTE", "N", "D", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        route, n, d, out = args.child
        _child(route, int(n), int(d), out)
        return
    if args.quick:
        accuracy_and_time([(5_000, 128), (2_000, 256)], args.repeat)
        memory(20_000, 256)
    else:
        accuracy_and_time([(50_000, 512), (20_000, 1024)], args.repeat)
        memory(200_000, 1024)


if __name__ == "__main__":
    main()
