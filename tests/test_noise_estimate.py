"""Estimating pre-training noise from the feature spectrum, on synthetic models whose
spectrum flattens with noise as the paper reports."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nmtune._io import save_feature_file
from nmtune._validation import NMTuneError
from nmtune.cli import main
from nmtune.noise_estimate import estimate_noise, load_calibration, validate_calibration
from nmtune.spectrum import summary

RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3)
SEEDS = (0, 1, 2, 3)


def _features(ratio, seed, n=300, d=16):
    """Features whose singular values decay as j^-a, flatter (higher SVE) with more noise."""
    rng = np.random.default_rng(1000 * seed + int(ratio * 100))
    a = 1.5 - 2.0 * ratio + rng.normal(0, 0.03)
    return rng.normal(size=(n, d)) * np.arange(1, d + 1) ** -a


def _calibration_table():
    rows = []
    for ratio in RATIOS:
        for seed in SEEDS:
            s = summary(_features(ratio, seed))
            rows.append({"noise_ratio": ratio, "seed": seed, "features_of": "probe/test",
                         "sve": s["sve"], "lsvr": s["lsvr"],
                         "effective_rank": s["effective_rank"]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table():
    return _calibration_table()


def test_leave_one_seed_out_beats_the_trivial_predictor(table):
    check = validate_calibration(table)
    assert check["mae"] < 0.5 * check["trivial_mae"]
    # The trivial error by hand: the other seeds' mean ratio is the grid mean (balanced grid).
    y = table["noise_ratio"].to_numpy()
    assert check["trivial_mae"] == pytest.approx(100 * np.mean(np.abs(y - y.mean())))


def test_held_out_predictions_equal_a_refit_without_that_seed(table):
    check = validate_calibration(table)
    held = table["seed"] == 2
    X = table[["sve", "lsvr", "effective_rank"]].to_numpy()
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    model.fit(X[~held], table["noise_ratio"][~held])
    np.testing.assert_allclose(check["predicted"][held], model.predict(X[held]))


@pytest.mark.parametrize("ratio", [0.08, 0.25])
def test_estimate_of_an_unseen_model(table, ratio):
    est = estimate_noise(_features(ratio, seed=9), table, level=0.9)
    assert est.low <= ratio <= est.high
    assert abs(est.ratio - ratio) < 0.05
    assert est.n_models == 20 and est.n_seeds == 4 and est.features_of == "probe/test"


def test_cli_reads_a_study_folder(table, tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    other = table.assign(features_of="other/test", sve=table["sve"] + 1)
    pd.concat([table, other]).to_csv(study / "spectrum.csv", index=False)
    feats = tmp_path / "model.npz"
    save_feature_file(feats, _features(0.2, seed=7).astype(np.float32), np.zeros(300, int))
    assert main(["estimate-noise", str(feats), "--calibration", str(study), "--probe",
                 "probe/test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["ratio"] - 0.2) < 0.05 and out["mae"] < out["trivial_mae"]
    # Two probe sets and none chosen: a one-line error naming them, exit 2.
    assert main(["estimate-noise", str(feats), "--calibration", str(study)]) == 2
    assert "several probe sets" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda t: t.drop(columns="lsvr"), "lsvr"),
        (lambda t: t[t["seed"] == 0], "2 seeds"),
        (lambda t: t.assign(sve="x"), "finite"),
        (lambda t: t.assign(noise_ratio=100 * t["noise_ratio"]), r"noise_ratio.*\[0, 1\]"),
        (lambda t: t.drop(columns="features_of"), "no probe set 'x'"),
    ],
)
def test_bad_calibration(table, tmp_path, change, match):
    path = tmp_path / "cal.csv"
    change(table).to_csv(path, index=False)
    with pytest.raises(NMTuneError, match=match):
        load_calibration(path, probe="x" if "probe" in match else None)


def test_features_of_another_width_are_refused(table):
    # A spectrum's SVE and effective rank grow with the width: a 64-d model read against a
    # 16-d calibration gives a number, but not an estimate.
    with pytest.raises(NMTuneError, match="64-d.*16-d"):
        estimate_noise(_features(0.1, 9, d=64), table.assign(d=16))
    assert 0 <= estimate_noise(_features(0.1, 9), table.assign(d=16)).ratio <= 1


def test_unknown_probe_and_missing_file(table, tmp_path):
    table.to_csv(tmp_path / "cal.csv", index=False)
    with pytest.raises(NMTuneError, match="no probe set 'x'"):
        load_calibration(tmp_path / "cal.csv", probe="x")
    with pytest.raises(NMTuneError, match="not found"):
        load_calibration(tmp_path / "nowhere")
