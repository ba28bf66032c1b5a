"""The study grid: config validation, results against direct recomputation, caching, and
resumption after SIGKILL ending in the same table as an uninterrupted run."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TIMING, kill_then_resume, results_table, start_study  # noqa: E402
from nmtune._validation import NMTuneError
from nmtune.study import (
    PACKAGED_CONFIGS,
    config_from_dict,
    load_config,
    make_tuner,
    run_study,
)


@pytest.mark.parametrize("path", sorted(PACKAGED_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_packaged_configs_are_valid(path):
    config = load_config(path.stem)
    assert config.tasks and config.methods and config.seeds


def test_default_config_has_the_promised_grid():
    cfg = load_config()
    assert cfg.noise.ratios == (0.0, 0.05, 0.10, 0.20, 0.30)
    assert len(cfg.seeds) >= 2 and set(cfg.methods) == {"lp", "mlp", "nmtune"}
    assert len(cfg.tasks) >= 2 and sum(len(t.ood) for t in cfg.tasks) >= 2


@pytest.mark.parametrize(
    "change, match",
    [
        ({"colour": 1}, "unknown key"),
        ({"seeds": []}, "seeds"),
        ({"methods": {"svm": {}}}, "unknown type"),
        ({"noise": {"kind": "symmetric", "ratios": [1.5]}}, "ratio"),
        ({"pretrain": None}, "needs a 'pretrain'"),
        ({"tasks": [{"name": "x", "train": "digits"}]}, "needs name, train and test"),
        ({"tasks": [{"name": "x", "train": {"split": "train"}, "test": "digits"}]}, "dataset"),
    ],
)
def test_config_errors_name_the_problem(change, match, tiny_study):
    with pytest.raises(NMTuneError, match=match):
        config_from_dict({**tiny_study, **change})


@pytest.mark.parametrize("entry, match", [
    ({"method": "nmtune", "clean_view": True}, "clean_view needs views: 2 or more"),
    ({"method": "nmtune", "views": 2, "clean_view": "yes"}, "clean_view must be true or false"),
])
def test_clean_view_entries_are_checked(entry, match, tiny_study):
    with pytest.raises(NMTuneError, match=match):
        config_from_dict({**tiny_study, "methods": {"x": entry}})


def test_a_clean_view_method_trains_on_its_own_extraction(tmp_path, monkeypatch, tiny_study):
    import nmtune.features

    calls, got = [], {}
    real_extract = nmtune.features.extract

    def recording(backbone, dataset, **kw):
        calls.append((dataset.split, kw["views"], kw["clean_view"]))
        fs = real_extract(backbone, dataset, **kw)
        got[calls[-1]] = np.asarray(fs.features)
        return fs

    monkeypatch.setattr(nmtune.features, "extract", recording)
    raw = {**tiny_study, "pretrain": None, "noise": None,
           "methods": {"lp": {"Cs": 1}, "lp-2view": {"method": "lp", "Cs": 1, "views": 2},
                       "lp-clean": {"method": "lp", "Cs": 1, "views": 2, "clean_view": True}}}
    tables = run_study(config_from_dict(raw), tmp_path, progress=False)
    # The training set three ways (1 view, 2 augmented, clean + augmented), each test set once.
    assert sorted(calls) == sorted([("train", 1, False), ("train", 2, False),
                                    ("train", 2, True), ("test", 1, False), ("test", 1, False)])
    clean = got["train", 1, False]
    np.testing.assert_array_equal(got["train", 2, True][0], clean)
    assert not np.allclose(got["train", 2, False][0], clean)
    np.testing.assert_array_equal(got["train", 2, True][1], got["train", 2, False][1])
    rows = tables["results"]
    assert sorted(rows.method.unique()) == ["lp", "lp-2view", "lp-clean"] and len(rows) == 6


def test_selection_grid_is_a_validation_search():
    search = make_tuner({"method": "nmtune", "select": {"w_cov": [0.0, 0.04]},
                         "select_val_size": 0.25}, seed=3, device="cpu")
    assert search.param_grid == {"w_cov": [0.0, 0.04]}
    assert search.cv.test_size == 0.25 and search.cv.n_splits == 1
    with pytest.raises(NMTuneError, match="unknown key 'bogus'"):
        make_tuner({"method": "lp", "select": {"bogus": [1]}}, seed=0, device="cpu")


def test_unknown_config_name_lists_the_packaged_ones():
    with pytest.raises(NMTuneError, match="default"):
        load_config("no-such-config")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_study):
    out = tmp_path_factory.mktemp("study")
    tables = run_study(config_from_dict(tiny_study), out, progress=False)
    return out, tables


def test_tables_cover_the_grid(tiny_run):
    out, tables = tiny_run
    results = pd.read_csv(out / "results.csv")
    # 2 ratios × 1 seed × 3 methods × (1 ID + 1 OOD) rows.
    assert len(results) == 12
    assert set(results["kind"]) == {"id", "ood"}
    assert set(results["method"]) == {"lp", "mlp", "nmtune"}
    assert results["accuracy"].between(0, 1).all()
    pretrain = pd.read_csv(out / "pretrain.csv")
    assert sorted(pretrain["noise_ratio"]) == [0.0, 0.3]
    # The realised rate is exact: round(0.3·N) of N training labels moved.
    n = int(pretrain["num_train"].iloc[0])
    noisy = pretrain[pretrain["noise_ratio"] == 0.3]["realised_noise_rate"].iloc[0]
    assert noisy == pytest.approx(round(0.3 * n) / n)
    assert len(pd.read_csv(out / "spectrum.csv")) == 2


def test_a_cell_equals_a_direct_recomputation(tiny_run):
    """The LP row of the noisy model equals extracting and probing by hand."""
    from nmtune.backbones import create_backbone
    from nmtune.data import load_dataset
    from nmtune.features import extract
    from nmtune.spectrum import summary
    from nmtune.tuners import LinearProbe

    out, tables = tiny_run
    weights = next((out / "pretrain").glob("symmetric-0.3-seed0")) / "backbone.pt"
    backbone = create_backbone("resnet8", weights=weights, width=4)
    train = extract(backbone, load_dataset("digits", "train", 300), cache_dir=False,
                    progress=False)
    test = extract(backbone, load_dataset("digits", "test", 200), cache_dir=False,
                   progress=False)
    probe = LinearProbe(Cs=3, random_state=0).fit(train.features, train.labels)
    rows = tables["results"]
    row = rows[(rows.noise_ratio == 0.3) & (rows.method == "lp") & (rows.kind == "id")]
    assert row["accuracy"].item() == pytest.approx(probe.score(test.features, test.labels))
    spec = tables["spectrum"]
    assert spec[spec.noise_ratio == 0.3]["sve"].item() == pytest.approx(
        summary(test.features)["sve"])


def test_rerun_reuses_every_cell(tiny_run, monkeypatch, tiny_study):
    out, tables = tiny_run
    import nmtune.study.cells as cells

    def fail(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    config = config_from_dict(tiny_study)  # builds each method's estimator once, to validate it
    monkeypatch.setattr(cells, "make_tuner", fail)
    again = run_study(config, out, progress=False)
    pd.testing.assert_frame_equal(again["results"], tables["results"])


@pytest.mark.parametrize("content", [b"{}", b"\x00not json", b"[1]", b'{"rows": 3}'],
                         ids=["empty", "garbage", "list", "wrong-rows"])
def test_broken_cell_files_are_recomputed_with_a_warning(tiny_run, tmp_path, content, tiny_study):
    out, tables = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tune = sorted((copy / "cells").glob("tune-*.json"))[0]
    spectrum = sorted((copy / "cells").glob("spectrum-*.json"))[0]
    for cell in (tune, spectrum):
        cell.write_bytes(content)
    with pytest.warns(UserWarning, match="recomputing") as caught:
        again = run_study(config_from_dict(tiny_study), copy, progress=False)
    assert {str(w.message).split(" ")[0] for w in caught} >= {str(tune), str(spectrum)}
    pd.testing.assert_frame_equal(again["results"].drop(columns=TIMING[:1]),
                                  tables["results"].drop(columns=TIMING[:1]))
    pd.testing.assert_frame_equal(again["spectrum"], tables["spectrum"])


def _own_cache(env: dict, out: Path) -> dict:
    """A child's environment with a feature cache of its own (nothing shared between runs)."""
    return {**env, "NMTUNE_CACHE": str(out / "unused-cache")}


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_table(tmp_path, tiny_study, child_env):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_study))
    straight_dir = tmp_path / "straight"
    straight = start_study(config, straight_dir, _own_cache(child_env, straight_dir))
    assert straight.wait(timeout=600) == 0, straight.stderr.read().decode()

    killed_dir = tmp_path / "killed"
    kill_then_resume(config, killed_dir, _own_cache(child_env, killed_dir))
    pd.testing.assert_frame_equal(results_table(killed_dir), results_table(tmp_path / "straight"))
    # Nothing half-written was left behind.
    assert not list(killed_dir.rglob("*.tmp"))
    np.testing.assert_array_equal(
        pd.read_csv(killed_dir / "spectrum.csv")["sve"],
        pd.read_csv(tmp_path / "straight" / "spectrum.csv")["sve"],
    )


@pytest.mark.parametrize(
    "task_train, match",
    [
        ({"dataset": "folder:/no/such/imagenet/train"}, "does not exist"),
        ({"dataset": "digits", "split": "validation"}, "no split 'validation'"),
        ({"dataset": "cifar-1000"}, "unknown dataset"),
    ],
)
def test_missing_data_fails_before_any_work(tmp_path, task_train, match, tiny_study):
    raw = {**tiny_study, "tasks": [{**tiny_study["tasks"][0], "train": task_train}]}
    with pytest.raises(NMTuneError, match=match):
        run_study(config_from_dict(raw), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_test_sets_must_share_the_training_classes(tmp_path, tiny_study):
    raw = {**tiny_study, "pretrain": None, "noise": None, "methods": {"lp": {"Cs": 1}},
           "tasks": [{"name": "digits", "train": {"dataset": "digits", "limit": 100},
                      "test": {"dataset": "fashion-mnist", "split": "test", "limit": 100}}]}
    with pytest.raises(NMTuneError, match="must be the same list"):
        run_study(config_from_dict(raw), tmp_path, progress=False)


@pytest.mark.slow
def test_each_feature_set_is_extracted_once_per_model(tmp_path, monkeypatch, tiny_study):
    import nmtune.features

    calls = []
    real_extract = nmtune.features.extract

    def counting(backbone, dataset, **kw):
        calls.append((backbone.identity(), dataset.fingerprint, kw["views"]))
        return real_extract(backbone, dataset, **kw)

    monkeypatch.setattr(nmtune.features, "extract", counting)
    run_study(config_from_dict(tiny_study), tmp_path, progress=False)
    # 2 models × (train, ID test, OOD test), shared by 3 methods and the spectrum.
    assert len(calls) == len(set(calls)) == 6
