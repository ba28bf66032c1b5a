"""``nmtune tune`` through ``nmtune.cli.main`` on feature files made from sklearn digits."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from nmtune._io import load_feature_file, save_feature_file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    X, y = load_digits(return_X_y=True)
    X = X / 16.0  # pixels in [0, 1], near the scale of backbone features
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1200], order[1200:]
    paths = {"train": root / "train.npz", "id": root / "id.npz", "ood": root / "ood.npz",
             "narrow": root / "narrow.npz", "views": root / "views.npz"}
    save_feature_file(paths["train"], X[train], y[train])
    save_feature_file(paths["id"], X[test], y[test])
    save_feature_file(paths["ood"], 1.0 - X[test], y[test])  # inverted digits
    save_feature_file(paths["narrow"], X[test, :10], y[test])
    save_feature_file(paths["views"], np.stack([X[train], X[train] * 0.9]), y[train])
    return paths


def _majority_share(path) -> float:
    """The chance level by hand: the share of the test file's most frequent label."""
    y = load_feature_file(path)[1]
    return np.bincount(y).max() / len(y)


@pytest.mark.parametrize("method,epochs", [("lp", None), ("mlp", 8), ("nmtune", 8)])
def test_json_reports_every_test_set(run_cli, files, method, epochs):
    extra = [] if epochs is None else ["--epochs", epochs]
    code, out, err = run_cli("tune", "--train", files["train"], "--test", f"id={files['id']}",
                          "--test", f"ood={files['ood']}", "--method", method, "--device",
                          "cpu", "--json", *extra)
    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == method and result["train"] == {
        "path": str(files["train"]), "n": 1200, "d": 64, "classes": 10}
    assert set(result["tests"]) == {"id", "ood"}
    assert result["tests"]["id"]["n"] == 597
    assert result["tests"]["id"]["chance"] == pytest.approx(_majority_share(files["id"]))
    assert result["tests"]["id"]["accuracy"] > 0.9
    assert result["tests"]["ood"]["accuracy"] < result["tests"]["id"]["accuracy"]
    assert result["fit_seconds"] > 0


def test_text_output_and_views(run_cli, files):
    code, out, _ = run_cli("tune", "--train", files["views"], "--test", f"id={files['id']}",
                        "--method", "nmtune", "--epochs", 2, "--seed", 3)
    assert code == 0
    header, columns, row = out.strip().splitlines()
    assert header.startswith("nmtune (seed 3) on ") and "N=1200, D=64, K=10" in header
    assert columns.split() == ["test", "n", "accuracy", "chance"]
    name, n, accuracy, chance = row.split()
    assert (name, n) == ("id", "597") and 0 <= float(accuracy) <= 1
    assert chance == f"{_majority_share(files['id']):.4f}"


def test_seeded_runs_agree(run_cli, files):
    argv = ["--train", files["train"], "--test", f"id={files['id']}", "--method", "mlp",
            "--epochs", 2, "--seed", 1, "--json"]
    first = json.loads(run_cli("tune", *argv)[1])["tests"]
    assert first == json.loads(run_cli("tune", *argv)[1])["tests"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--test", "id=missing.npz", "--method", "lp"], "not found"),
        (["--test", "id.npz", "--method", "lp"], "NAME=PATH"),
        (["--test", "=x.npz", "--method", "lp"], "NAME=PATH"),
        (["--test", "{narrow}", "--method", "lp"], "width 10"),
        (["--test", "{id}", "--test", "{id}", "--method", "lp"], "given twice"),
        (["--test", "{id}", "--method", "lp", "--epochs", "3"], "--epochs applies"),
        (["--test", "{id}", "--method", "auto", "--epochs", "3"], "not auto"),
        (["--test", "{id}", "--method", "mlp", "--epochs", "0"], "--epochs must be"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, files, argv, message):
    argv = [a.format(**{k: f"{k}={v}" for k, v in files.items()}) for a in argv]
    code, out, err = run_cli("tune", "--train", files["train"], *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_unknown_method_is_an_argparse_error(capsys, run_cli, files):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("tune", "--train", files["train"], "--test", f"id={files['id']}", "--method", "svm")
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ------------------------------------------------------------------ every file checked first


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Small feature files, each wrong in one way; names map to (features, labels)."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 4)), np.arange(12) % 3
    cases = {
        "train": (X, y),
        "short_labels": (X, y[:9]),
        "views_wrong_rows": (np.stack([X, X])[:, :10], y),
        "nan_labels": (X, np.where(np.arange(12) == 3, np.nan, y)),
        "labels_2d": (X, np.stack([y, y], axis=1)),
        "continuous": (X, y + 0.25),
        "string_labels": (X, np.array(list("abcabcabcabc"))),
        "nan_features": (np.where(X > 1, np.nan, X), y),
        "one_d": (X[:, 0], y),
        "whole_floats": (X, y.astype(np.float64)),
    }
    paths = {}
    for name, (features, labels) in cases.items():
        paths[name] = root / f"{name}.npz"
        save_feature_file(paths[name], features, labels)
    return paths


@pytest.fixture
def no_fit(monkeypatch):
    """Fail any fit: every check must happen before training starts."""
    from nmtune import tuners

    def fit(self, X, y):
        raise AssertionError("fit was reached")

    monkeypatch.setattr(tuners.LinearProbe, "fit", fit)


@pytest.mark.parametrize(
    "test,message",
    [
        ("short_labels", "12 samples but 9 labels"),
        ("views_wrong_rows", "10 samples but 12 labels"),
        ("nan_labels", "NaN"),
        ("labels_2d", "labels must be 1-D"),
        ("continuous", "continuous labels"),
        ("string_labels", "strings, but the training labels are integers"),
        ("nan_features", "NaN"),
    ],
)
def test_every_test_file_is_checked_before_fitting(run_cli, bad_files, no_fit, test, message):
    code, out, err = run_cli("tune", "--train", bad_files["train"], "--test",
                          f"id={bad_files['train']}", "--test", f"bad={bad_files[test]}",
                          "--method", "lp")
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert str(bad_files[test]) in err  # names the file at fault


@pytest.mark.parametrize(
    "train,message",
    [
        ("continuous", "continuous labels"),
        ("one_d", "features must be 2-D or 3-D (N×D or V×N×D), got shape (12,)"),
        ("nan_labels", "NaN"),
    ],
)
def test_training_file_is_checked_with_an_accurate_message(run_cli, bad_files, no_fit, train,
                                                           message):
    code, out, err = run_cli("tune", "--train", bad_files[train], "--test",
                          f"id={bad_files['train']}", "--method", "lp")
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert str(bad_files[train]) in err


def test_whole_number_float_labels_are_read_as_integers(run_cli, bad_files):
    argv = ["--test", f"id={bad_files['train']}", "--method", "lp", "--json"]
    code, out, err = run_cli("tune", "--train", bad_files["whole_floats"], *argv)
    assert code == 0, err
    as_floats = json.loads(out)["tests"]["id"]["accuracy"]
    assert json.loads(run_cli("tune", "--train", bad_files["train"], *argv)[1])["tests"]["id"][
        "accuracy"] == as_floats


def test_test_classes_the_training_set_lacks_are_noted(run_cli, files, tmp_path):
    # Training on digits 0-4 only: a test file of all ten digits can score at most the share
    # of 0-4, and the output says why instead of printing a low accuracy alone.
    X, y = load_feature_file(files["train"])[:2]
    keep = y < 5
    save_feature_file(tmp_path / "half.npz", X[keep], y[keep])
    code, out, err = run_cli("tune", "--train", tmp_path / "half.npz", "--test",
                             f"id={files['id']}", "--method", "lp", "--json")
    y_test = load_feature_file(files["id"])[1]
    unseen = int((y_test >= 5).sum())
    assert code == 0
    assert err.strip() == (f"note: test 'id' has {unseen} of {len(y_test)} rows in classes the "
                           "training set lacks ([5, 6, 7, 8, 9]); no tuner can predict them")
    assert json.loads(out)["tests"]["id"]["accuracy"] <= 1 - unseen / len(y_test)


def test_one_class_is_named_as_the_user_wrote_it(run_cli, tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 4))
    np.savez(tmp_path / "one.npz", features=X, labels=np.zeros(20, dtype=np.int64))
    path = str(tmp_path / "one.npz")
    status, _, err = run_cli("tune", "--train", path, "--test", f"id={path}", "--method", "lp")
    assert status == 2
    assert "one class only (0)" in err, err
