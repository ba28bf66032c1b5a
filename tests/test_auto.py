"""The auto tuner against scikit-learn's own cross-validation and searches."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from nmtune._validation import NMTuneError
from nmtune.tuners import AutoTuner, LinearProbe, NMTuneClassifier, create_tuner


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n=240, seed=3):
    return make_classification(n_samples=n, n_features=30, n_informative=5, n_classes=3,
                               random_state=seed)


#: Two fixed-C linear probes: each is scikit-learn's StandardScaler + LogisticRegression(C).
LP_PAIR = [{"method": "lp", "Cs": [1.0], "tol": 1e-7}, {"method": "lp", "Cs": [0.003], "tol": 1e-7}]


def _reference(C):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10_000))


def test_cv_scores_choice_and_refit_match_sklearn_cross_validation():
    X, y = _data()
    auto = AutoTuner(candidates=LP_PAIR, random_state=5).fit(X, y)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=5)
    for i, C in enumerate((1.0, 0.003)):
        ref = cross_val_score(_reference(C), X, y, cv=folds)
        # Same folds, same objective: fold accuracies agree to a sample or so.
        got = [auto.cv_results_[f"split{s}_test_score"][i] for s in range(3)]
        np.testing.assert_allclose(got, ref, atol=1.5 / (len(y) / 3))
    means = auto.cv_results_["mean_test_score"]
    assert auto.best_index_ == int(np.argmax(means)) and auto.best_score_ == means.max()
    assert auto.best_params_ == LP_PAIR[auto.best_index_]
    assert means[0] != means[1], "the data must make the choice matter"
    refit = _reference(auto.best_params_["Cs"][0]).fit(X, y)
    np.testing.assert_allclose(auto.predict_proba(X), refit.predict_proba(X), atol=2e-3)
    np.testing.assert_array_equal(auto.predict(X), auto.best_estimator_.predict(X))


def test_cv_results_have_the_search_shape():
    X, y = _data(n=150)
    auto = AutoTuner(candidates=[*LP_PAIR, {"method": "mlp", "epochs": 2, "min_steps": 0}],
                     random_state=0).fit(X, y)
    res = auto.cv_results_
    assert res["params"] == [*LP_PAIR, {"method": "mlp", "epochs": 2, "min_steps": 0}]
    assert list(res["method"]) == ["lp", "lp", "mlp"] and auto.n_splits_ == 3
    for key in ("mean_test_score", "std_test_score", "rank_test_score", "mean_fit_time"):
        assert res[key].shape == (3,)
    scores = np.stack([res[f"split{s}_test_score"] for s in range(3)], axis=1)
    np.testing.assert_allclose(res["mean_test_score"], scores.mean(axis=1))
    np.testing.assert_allclose(res["std_test_score"], scores.std(axis=1))
    # scikit-learn's ranking: 1 is best, ties share the smaller rank.
    from scipy.stats import rankdata
    np.testing.assert_array_equal(res["rank_test_score"],
                                  rankdata(-res["mean_test_score"], method="min"))
    assert res["rank_test_score"][auto.best_index_] == 1


def test_large_training_sets_use_one_stratified_held_out_split():
    X, y = _data(n=300)
    auto = AutoTuner(candidates=LP_PAIR, holdout_above=200, val_size=0.25,
                     random_state=7).fit(X, y)
    assert auto.n_splits_ == 1 and "split1_test_score" not in auto.cv_results_
    idx = np.arange(len(y))
    train, val = train_test_split(idx, test_size=math.ceil(0.25 * len(y)), random_state=7,
                                  stratify=y)
    for i, C in enumerate((1.0, 0.003)):
        ref = _reference(C).fit(X[train], y[train]).score(X[val], y[val])
        assert auto.cv_results_["split0_test_score"][i] == pytest.approx(ref, abs=1.5 / len(val))


@pytest.fixture
def probe_fits(monkeypatch):
    """The row counts of every LinearProbe fit, in order."""
    fits = []
    original = LinearProbe.fit
    monkeypatch.setattr(LinearProbe, "fit",
                        lambda self, X, y: fits.append(len(y)) or original(self, X, y))
    return fits


def test_one_linear_probe_per_fold_serves_every_candidate(probe_fits):
    X, y = _data(n=120)
    net = {"method": "nmtune", "epochs": 1, "min_steps": 0}
    auto = AutoTuner(candidates=[{"method": "lp"}, net, {**net, "w_cov": 0.0}],
                     random_state=0).fit(X, y)
    # Three folds and the refit: the nets' probe-then-tune heads reuse the lp candidate's fit.
    assert probe_fits == [80, 80, 80, 120]
    assert isinstance(auto.best_estimator_, LinearProbe | NMTuneClassifier)


def test_a_held_out_winner_network_is_refitted_warm_without_a_probe(probe_fits):
    X, y = _data(n=150)
    net = {"method": "nmtune", "protocol": "authors", "epochs": 8}
    auto = AutoTuner(candidates=[net], holdout_above=100, random_state=0).fit(X, y)
    assert auto.n_splits_ == 1
    # The split's probe only: the authors' random head needs none, and the refit is warm.
    assert probe_fits == [120]
    assert len(auto.best_estimator_.history_) == 2  # a quarter of the split fit's 8 epochs
    assert auto.best_estimator_.n_steps_ == 2 * 3  # 150 rows in batches of 64: 3 a epoch


def test_a_class_missing_from_the_split_fit_gets_a_cold_refit():
    from nmtune.tuners.base import stratified_split

    X, y = _data(n=150)
    y[7] = 3  # a class of one sample: the held-out split is a plain shuffle
    seed = next(s for s in range(50) if 7 in stratified_split(y, 0.2, s)[1])
    net = {"method": "nmtune", "protocol": "authors", "epochs": 8}
    auto = AutoTuner(candidates=[net], holdout_above=100, random_state=seed).fit(X, y)
    assert list(auto.best_estimator_.classes_) == [0, 1, 2, 3]
    assert len(auto.best_estimator_.history_) == 8  # from scratch, not a quarter


def test_registry_and_bad_candidates():
    assert isinstance(create_tuner("auto", n_splits=4), AutoTuner)
    X, y = _data(n=60)
    for candidates, match in [([{"method": "svm"}], "unknown tuner 'svm'"),
                              ([{"Cs": 3}], "candidates must be"),
                              ([], "candidates must be"),
                              ([{"method": "auto"}], "cannot itself be 'auto'"),
                              ([{"method": "mlp", "epochs": 0}], "'epochs' parameter")]:
        with pytest.raises(NMTuneError, match=match):
            AutoTuner(candidates=candidates).fit(X, y)
    with pytest.raises(NMTuneError, match="'n_splits' parameter"):
        AutoTuner(n_splits=1).fit(X, y)


def test_packaged_studies_compare_auto_and_replay_the_authors_protocol():
    from importlib.resources import files

    from nmtune.study import load_config

    configs = sorted(p.name for p in files("nmtune.configs").iterdir() if p.name.endswith(".yaml"))
    assert len(configs) >= 5
    for name in configs:
        methods = load_config(name.removesuffix(".yaml")).methods
        # The laptop studies keep their 10-minute budget (docs/benchmarks.md), and resolve is
        # the default sized up: no CV there.
        laptop = name in ("default.yaml", "clip.yaml", "resolve.yaml")
        assert ("auto" not in methods) if laptop else (methods["auto"]["method"] == "auto"), name
        for entry in methods.values():
            if entry["method"] in ("mlp", "nmtune"):
                assert entry.get("protocol") == "authors", (name, entry)


@pytest.mark.slow
@parametrize_with_checks([AutoTuner()],
                         expected_failed_checks=lambda est: {
                             "check_methods_subset_invariance": "float32 predictions of the "
                             "residual-MLP candidates (see test_tuners.py)"})
def test_sklearn_estimator_checks_at_defaults(estimator, check):
    # ~3.5 min on the shared 2-core box: every check fits three folds and a refit.
    check(estimator)


def test_nmtune_tune_method_auto(tmp_path, capsys):
    import json

    from sklearn.datasets import load_digits

    from nmtune._io import save_feature_file
    from nmtune.cli import main

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, train_size=300,
                                                        random_state=0, stratify=y)
    save_feature_file(tmp_path / "train.npz", X_train, y_train)
    save_feature_file(tmp_path / "test.npz", X_test, y_test)
    code = main(["tune", "--train", str(tmp_path / "train.npz"), "--test",
                 f"id={tmp_path / 'test.npz'}", "--method", "auto", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    ref = _reference(1.0).fit(X_train, y_train).score(X_test, y_test)
    assert result["method"] == "auto" and result["tests"]["id"]["accuracy"] >= ref - 0.03
