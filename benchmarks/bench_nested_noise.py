"""Nested label noise vs independent draws per ratio: how wide are the paired intervals?

A noise grid compares models trained at several ratios with the same seed. With nested noise
(``nmtune.noise``: one seeded order and one replacement draw per sample), the samples
corrupted at 5% are among those corrupted at 10%, with the same labels; with independent
draws (the peer: a fresh noise seed for every ratio, as before nesting) each ratio corrupts an
unrelated set. Everything else (the model seed, the data) is shared across ratios in both.

Each "model" here is a classifier trained on the noisy labels of scikit-learn's digits (1,200
training images) and scored on the clean remaining 597: a logistic regression (deterministic
given the labels) and a small MLP (seeded initialisation and batch order, shared across
ratios). For every seed the script computes the per-seed statistics the report pairs:

- ``step``: mean accuracy change between neighbouring noisy ratios (5→10, 10→20, 20→30%);
- ``slope``: least-squares slope of accuracy against ratio (points per 10% noise);
- ``claim 1``: mean of 5% and 10% minus 0% (the report's claim (1));
- ``claim 2``: 30% minus 0% (claim (2)); a control, since a single ratio against the clean
  model is the same in both designs.

It prints, per model and statistic, the 95% t-interval width over seeds
(``nmtune.stats.paired_effect``) for each design and the ratio independent / nested (> 1:
nesting narrows the interval), with a 95% bootstrap interval of that ratio (seeds resampled,
the two designs kept paired by seed, since they share the clean model and the model seed).

Run: ``python benchmarks/bench_nested_noise.py`` (100 seeds; 3-5 minutes on 2 cores);
``--quick`` for 10 seeds and the logistic regression only.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy import stats as sps
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nmtune.noise import symmetric
from nmtune.stats import paired_effect

RATIOS = (0.0, 0.05, 0.10, 0.20, 0.30)
N_TRAIN = 1200
MODELS = {
    "logreg": lambda seed: make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
    "mlp": lambda seed: make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(32,), max_iter=60, random_state=seed)),
}


def accuracies(model: str, design: str, seeds: range, data) -> np.ndarray:
    """Clean test accuracy (points), shape (len(seeds), len(RATIOS))."""
    X_train, y_train, X_test, y_test = data
    out = np.empty((len(seeds), len(RATIOS)))
    for i, seed in enumerate(seeds):
        for j, ratio in enumerate(RATIOS):
            # Independent draws: a fresh noise seed per ratio; nested: the grid seed itself.
            noise_seed = seed if design == "nested" else 1000 * seed + j
            noisy, _ = symmetric(y_train, ratio, num_classes=10, seed=noise_seed)
            clf = MODELS[model](seed).fit(X_train, noisy)
            out[i, j] = 100 * clf.score(X_test, y_test)
    return out


def statistics(acc: np.ndarray) -> dict[str, np.ndarray]:
    """Per-seed statistics of an accuracy grid (seeds × ratios)."""
    ratios = np.asarray(RATIOS)
    centred = ratios - ratios.mean()
    return {
        "step": np.diff(acc[:, 1:], axis=1).mean(axis=1),
        "slope": 0.1 * (acc - acc.mean(axis=1, keepdims=True)) @ centred / (centred @ centred),
        "claim 1": acc[:, 1:3].mean(axis=1) - acc[:, 0],
        "claim 2": acc[:, -1] - acc[:, 0],
    }


def _ratio_interval(nested: np.ndarray, independent: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap of sd(independent) / sd(nested), resampling seeds in pairs."""
    def ratio(a, b, axis):
        return np.std(b, ddof=1, axis=axis) / np.std(a, ddof=1, axis=axis)

    res = sps.bootstrap((nested, independent), ratio, paired=True, vectorized=True,
                        method="percentile", n_resamples=4999, rng=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="10 seeds, logistic regression")
    args = parser.parse_args()
    # A short MLP schedule is the point (a cheap model per grid cell), not a mistake.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    seeds = range(10 if args.quick else args.seeds)
    models = ["logreg"] if args.quick else list(MODELS)
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))  # one fixed split for every model
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    data = (X[train], y[train], X[test], y[test])
    print(f"{len(seeds)} seeds, ratios {RATIOS}, digits {N_TRAIN} train / {len(test)} test")
    print("| model | statistic | mean (pts) | 95% width nested | 95% width independent "
          "| independent / nested | 95% CI of the ratio |")
    print("|---|---|---|---|---|---|---|")
    for model in models:
        t0 = time.perf_counter()
        stats = {d: statistics(accuracies(model, d, seeds, data))
                 for d in ("nested", "independent")}
        for name in stats["nested"]:
            widths = {}
            for design, values in stats.items():
                e = paired_effect(values[name])
                widths[design] = e.t_high - e.t_low
            mean = stats["nested"][name].mean()
            low, high = _ratio_interval(stats["nested"][name], stats["independent"][name])
            print(f"| {model} | {name} | {mean:+.2f} | {widths['nested']:.2f} | "
                  f"{widths['independent']:.2f} | "
                  f"{widths['independent'] / widths['nested']:.2f}× | {low:.2f}–{high:.2f} |")
        print(f"<!-- {model}: {time.perf_counter() - t0:.0f} s -->")


if __name__ == "__main__":
    main()
