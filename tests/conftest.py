"""Shared fixtures."""

import itertools

import numpy as np
import pandas as pd
import pytest


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
