"""``nmtune tune``: fit a linear probe, MLP probe or NMTune on a feature file, score test files."""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(subparsers) -> None:
    from ..tuners import list_tuners  # the registry loads without torch

    tuners = list_tuners()
    p = subparsers.add_parser(
        "tune",
        help="fit LP / MLP / NMTune on a feature file and print test accuracy",
        description="Fit a tuner on the features of TRAIN.npz (N×D, or V×N×D augmented views) "
        "and print the accuracy on each test file, with its size, the chance level (the share of "
        "its most frequent class) and the fit time. Test files are read as N×D (view 0 of V×N×D).",
    )
    p.add_argument("--train", required=True, metavar="TRAIN.npz", help="training feature file")
    p.add_argument("--test", required=True, action="append", metavar="NAME=TEST.npz",
                   help="a named test feature file; repeat for several (ID, OOD, ...)")
    p.add_argument("--method", required=True, choices=[spec.name for spec in tuners],
                   help="; ".join(f"{spec.name}: {spec.description}" for spec in tuners))
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs for mlp/nmtune (default: the tuner's, 30)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _parse_tests(specs: list[str]) -> dict[str, str]:
    from .._validation import NMTuneError

    tests: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise NMTuneError(f"--test wants NAME=PATH (e.g. id=test.npz), got {spec!r}")
        if name in tests:
            raise NMTuneError(f"--test name {name!r} is given twice")
        tests[name] = path
    return tests


def _estimator(args: argparse.Namespace):
    from .._validation import NMTuneError
    from ..tuners import create_tuner

    params = {"random_state": args.seed, "device": args.device}
    if args.epochs is not None:
        if args.method not in ("mlp", "nmtune"):
            raise NMTuneError(f"--epochs applies to mlp and nmtune, not {args.method} (lp runs "
                              "L-BFGS to convergence; auto sets its candidates' own budgets)")
        if args.epochs < 1:
            raise NMTuneError(f"--epochs must be >= 1, got {args.epochs}")
        params["epochs"] = args.epochs
    return create_tuner(args.method, **params)


def _load(path: str, role: str):
    """Features and class labels of one file, checked as a whole (see ``check_feature_set``)."""
    from .._io import load_feature_file
    from .._validation import check_feature_set

    return check_feature_set(*load_feature_file(path)[:2], f"{role} {path}")


def run(args: argparse.Namespace) -> int:
    from .._validation import NMTuneError, label_kind
    from ..results import chance_level

    estimator = _estimator(args)
    X_train, y_train = _load(args.train, "--train")
    # Check every test file before fitting, so a bad one fails in a second, not after training.
    tests = {name: (path, *_load(path, f"test {name!r}"))
             for name, path in _parse_tests(args.test).items()}
    for name, (path, X_test, y_test) in tests.items():
        if X_test.shape[-1] != X_train.shape[-1]:
            raise NMTuneError(
                f"test {name!r} {path} has features of width {X_test.shape[-1]} but "
                f"{args.train} has {X_train.shape[-1]}; they must come from the same backbone"
            )
        if label_kind(y_test) != label_kind(y_train):
            raise NMTuneError(
                f"test {name!r} {path}: labels are {label_kind(y_test)}, but the training "
                f"labels are {label_kind(y_train)}"
            )

    start = time.perf_counter()
    estimator.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    for name, (_, _, y_test) in tests.items():
        _note_unseen_classes(name, y_test, estimator.classes_)
    n_classes = len(estimator.classes_)
    result = {
        "method": args.method,
        "seed": args.seed,
        "train": {"path": str(args.train), "n": int(len(y_train)),
                  "d": int(X_train.shape[-1]), "classes": n_classes},
        "fit_seconds": round(fit_seconds, 3),
        "tests": {
            name: {"path": path, "n": int(len(y_test)),
                   "accuracy": float(estimator.score(X_test, y_test)),
                   "chance": chance_level(y_test)}
            for name, (path, X_test, y_test) in tests.items()
        },
    }
    print(json.dumps(result) if args.json else _format(result))
    return 0


def _note_unseen_classes(name: str, y_test, classes) -> None:
    """Say on stderr when a test set holds classes the fit never saw: its accuracy is then
    capped below 1 by them, which the number alone does not show."""
    import numpy as np

    unseen = ~np.isin(y_test, classes)
    if unseen.any():
        lacking = np.unique(y_test[unseen]).tolist()
        print(f"note: test {name!r} has {int(unseen.sum())} of {len(y_test)} rows in classes the "
              f"training set lacks ({lacking}); no tuner can predict them", file=sys.stderr)


def _format(r: dict) -> str:
    t = r["train"]
    lines = [
        f"{r['method']} (seed {r['seed']}) on {t['path']}: N={t['n']}, D={t['d']}, "
        f"K={t['classes']}; fit {r['fit_seconds']:.2f} s",
        f"{'test':<12} {'n':>7} {'accuracy':>9} {'chance':>7}",
    ]
    lines += [f"{name:<12} {s['n']:>7} {s['accuracy']:>9.4f} {s['chance']:>7.4f}"
              for name, s in r["tests"].items()]
    return "\n".join(lines)
