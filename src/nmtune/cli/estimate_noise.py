"""``nmtune estimate-noise FEATURES.npz --calibration STUDY``: a model's pre-training noise."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "estimate-noise",
        help="estimate the pre-training noise ratio of a model from its feature spectrum",
        description="Predict the label-noise ratio a model was pre-trained with from the "
        "spectrum (SVE, LSVR, effective rank) of its features on a probe set, by a ridge "
        "regression calibrated on a study's grid of models with known noise (its "
        "spectrum.csv). Prints the estimate, a prediction interval, and the calibration's "
        "leave-one-seed-out error against the trivial (mean) predictor. Holds only for the "
        "calibration's architecture, pre-training data family and probe set.",
    )
    p.add_argument("features", metavar="FEATURES.npz",
                   help="the model's features of the probe set (as `nmtune extract` writes)")
    p.add_argument("--calibration", required=True, metavar="STUDY_DIR",
                   help="a study folder (its spectrum.csv) or a calibration CSV")
    p.add_argument("--probe", default=None, metavar="FEATURES_OF",
                   help="the calibration's probe set (its features_of), when it has several")
    p.add_argument("--level", type=float, default=0.9,
                   help="coverage of the interval (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._io import load_feature_file
    from .._validation import as_float_array
    from ..noise_estimate import estimate_noise

    features = as_float_array(load_feature_file(args.features)[0], ndim=(2, 3))
    if features.ndim == 3:
        print(f"note: {args.features} holds {features.shape[0]} views; using view 0",
              file=sys.stderr)
        features = features[0]
    est = estimate_noise(features, args.calibration, probe=args.probe, level=args.level)
    if args.json:
        print(json.dumps(est.to_dict()))
        return 0
    print(f"{args.features}: estimated pre-training noise {est.ratio:.1%} "
          f"({est.level:.0%} interval {est.low:.1%} to {est.high:.1%})")
    print(f"calibration: {est.n_models} models, {est.n_seeds} seeds, probe set "
          f"{est.features_of!r}; leave-one-seed-out MAE {est.mae:.1f} noise-ratio points "
          f"(trivial mean predictor {est.trivial_mae:.1f})")
    return 0
