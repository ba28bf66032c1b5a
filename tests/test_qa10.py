"""QA round 10: hostile input to raw_regularisers, the auto tuner, the standardisation floor
and clean_view."""

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification

from nmtune._validation import NMTuneError
from nmtune.tuners import AutoTuner, LinearProbe, MLPProbe, NMTuneClassifier


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n=90, d=6, classes=3, seed=0):
    return make_classification(n, d, n_informative=4, n_redundant=0, n_classes=classes,
                               random_state=seed)


# ----------------------------------------------------------------- divergence, huge features


@pytest.mark.parametrize("kw", [{"protocol": "authors"}, {"protocol": "authors", "w_svd": 0.0}])
def test_huge_scale_features_fail_with_a_clear_error_not_a_torch_traceback(kw):
    # The authors' protocol takes the covariance term on the raw features: at 1e10 it
    # overflows float32 and the model's weights become NaN.
    X, y = _data()
    with pytest.raises(NMTuneError, match=r"diverged .*standardise the features \(largest "
                       r"\|x\| = [0-9.]+e\+10"):
        NMTuneClassifier(device="cpu", random_state=0, epochs=3, min_steps=0, **kw).fit(
            X * 1e10, y)


@pytest.mark.parametrize("raw", [True, False])
def test_huge_scale_features_train_at_the_default_protocol(raw):
    # Standardised, with the regularisers on features shrunk to at most unit scale (or on
    # the standardised ones): nothing overflows.
    X, y = _data()
    est = NMTuneClassifier(raw_regularisers=raw, device="cpu", random_state=0, epochs=3,
                           min_steps=0).fit(X * 1e10, y)
    assert np.isfinite(est.predict_proba(X * 1e10)).all()


def test_a_diverging_learning_rate_fails_with_a_clear_error():
    X, y = _data()
    with pytest.raises(NMTuneError, match="diverged"):
        NMTuneClassifier(lr=1e12, device="cpu", random_state=0, epochs=3).fit(X, y)


def test_mlp_probe_history_loss_ignores_an_overflowing_unweighted_term():
    # The logged (weight-0) covariance term overflows; the loss, CE alone, does not.
    X, y = _data()
    est = MLPProbe(device="cpu", random_state=0, epochs=2, min_steps=0).fit(X * 1e10, y)
    assert all(np.isfinite(r["loss"]) and r["loss"] == r["ce"] for r in est.history_)


@pytest.mark.parametrize("kw", [{}, {"raw_regularisers": False}])
def test_all_zero_features_train(kw):
    # The spectrum term of an all-zero z was 0/0: NaN weights, then a torch LinAlgError.
    y = np.arange(30) % 2
    est = NMTuneClassifier(device="cpu", random_state=0, epochs=2, **kw).fit(np.zeros((30, 4)), y)
    assert np.isfinite(est.predict_proba(np.zeros((3, 4)))).all()


@pytest.mark.parametrize("cls", [MLPProbe, NMTuneClassifier])
def test_batch_size_one_on_single_view_data_is_a_clear_error(cls):
    X, y = _data(n=20)
    with pytest.raises(NMTuneError, match="batch_size"):
        cls(batch_size=1, device="cpu", epochs=1).fit(X, y)


def test_batch_size_one_with_two_views_still_trains():
    X, y = _data(n=20)
    views = np.stack([X, X + 0.01])
    est = MLPProbe(batch_size=1, device="cpu", epochs=1, min_steps=0).fit(views, y)
    assert est.n_steps_ == 19  # the trailing 1-row batch joins the one before


# ----------------------------------------------------------------------------- auto tuner


@pytest.mark.parametrize("candidates,match", [
    (["lp"], "candidates must be"),
    ([{"method": "lp", "random_state": 3}], "random_state"),
])
def test_bad_auto_candidates_are_named(candidates, match):
    X, y = _data()
    with pytest.raises(NMTuneError, match=match):
        AutoTuner(candidates=candidates, device="cpu").fit(X, y)


def test_auto_lp_candidate_with_an_array_of_cs():
    X, y = _data()
    Cs = np.array([0.1, 1.0])
    auto = AutoTuner(candidates=[{"method": "lp", "Cs": Cs}], device="cpu", random_state=0)
    auto.fit(X, y)
    ref = LinearProbe(Cs=Cs, device="cpu", random_state=0).fit(X, y)
    np.testing.assert_allclose(auto.predict_proba(X), ref.predict_proba(X))


@pytest.mark.parametrize("holdout_above", [1, 2000])
def test_auto_on_too_few_samples_to_validate_says_so(holdout_above):
    # Two samples, one per class: every training fold holds one class.
    with pytest.raises(NMTuneError, match="cannot validate .* one class"):
        AutoTuner(candidates=[{"method": "lp"}], holdout_above=holdout_above,
                  device="cpu").fit(np.array([[0.0, 1.0], [1.0, 0.0]]), ["a", "b"])


def test_study_config_checks_auto_candidates_up_front(tiny_study):
    from nmtune.study import config_from_dict

    for candidates in ([{"method": "mlp", "raw_regularisers": "yes"}],
                       [{"method": "mlp", "random_state": 3}], ["mlp"]):
        config = copy.deepcopy(tiny_study)
        config["methods"] = {"auto": {"candidates": candidates}}
        with pytest.raises(NMTuneError, match="methods.auto"):
            config_from_dict(config)


# ------------------------------------------------------------------- standardisation floor


def test_one_feature_in_large_units_does_not_wipe_out_the_others():
    X, y = make_classification(400, 8, n_informative=4, n_redundant=0, n_classes=3,
                               random_state=0)
    X = np.hstack([X, 1e6 * np.random.default_rng(0).normal(size=(400, 1))])  # e.g. a timestamp
    lp = LinearProbe(device="cpu", random_state=0).fit(X[:300], y[:300])
    assert lp.score(X[300:], y[300:]) > 0.5  # StandardScaler + LogisticRegression: 0.65


# ------------------------------------------------------------------------------ clean_view


def test_clean_view_never_shares_a_cache_entry_with_an_augmented_view_0(tmp_path):
    from nmtune.backbones import create_backbone
    from nmtune.data import load_dataset
    from nmtune.features import ImageAugment, extract

    class Augment:  # a user augmentation whose identity happens to end like a clean key
        def __init__(self, identity):
            self.identity, self.inner = identity, ImageAugment()

        def __call__(self, batch, seeds):
            return self.inner(batch, seeds)

    backbone = create_backbone("resnet8", width=4)
    dataset = load_dataset("digits", "train", 20, 0)
    kw = {"views": 2, "cache_dir": tmp_path, "progress": False, "device": "cpu"}
    clean = extract(backbone, dataset, clean_view=True, augment=Augment("aug"), **kw)
    other = extract(backbone, dataset, clean_view=False,
                    augment=Augment("aug; view 0 clean"), **kw)
    assert other.meta["cache"] == "miss"
    assert clean.meta["cache_key"] != other.meta["cache_key"]
