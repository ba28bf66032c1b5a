"""``nmtune analyze``: output parsed and checked against numpy, errors as one line, exit 2."""

import json

import numpy as np
import pytest

from nmtune import cli
from nmtune._io import save_feature_file
from nmtune.cli import main


@pytest.fixture(autouse=True)
def _analyze_only(monkeypatch):
    """Build the parser with this verb alone, so these tests do not depend on other verbs."""
    monkeypatch.setattr(cli, "COMMANDS", ("analyze",))


def _metrics(X, normalize=True, center=True):
    Z = X.astype(np.float64)
    if normalize:
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    if center:
        Z = Z - Z.mean(axis=0)
    s = np.linalg.svd(Z, compute_uv=False)
    p = s / s.sum()
    return s, -np.sum(p * np.log(p)), p.max()


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return rng.normal(size=(120, 16)) * np.linspace(3, 0.1, 16) + 1.0


def _run_json(run_cli, *argv):
    code, out, err = run_cli("analyze", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_json_output_matches_numpy(tmp_path, run_cli, features):
    path = tmp_path / "f.npz"
    save_feature_file(path, features, np.zeros(120, dtype=np.int64))
    out = _run_json(run_cli, path)
    s, sve, lsvr = _metrics(features)
    assert out["n"] == 120 and out["d"] == 16 and out["views"] == 1
    assert out["sve"] == pytest.approx(sve, rel=1e-9)
    assert out["lsvr"] == pytest.approx(lsvr, rel=1e-9)
    assert out["effective_rank"] == pytest.approx(np.exp(sve), rel=1e-9)
    np.testing.assert_allclose(out["top_singular_values"], s[:10], rtol=1e-9)


def test_switches_and_top(tmp_path, run_cli, features):
    path = tmp_path / "f.npz"
    save_feature_file(path, features.astype(np.float32), np.zeros(120, dtype=np.int64))
    out = _run_json(run_cli, path, "--no-normalize", "--no-center", "--top", "3")
    s, sve, _ = _metrics(features.astype(np.float32), normalize=False, center=False)
    assert not out["normalize"] and not out["center"]
    assert out["sve"] == pytest.approx(sve, rel=1e-6)
    np.testing.assert_allclose(out["top_singular_values"], s[:3], rtol=1e-6)


def test_multi_view_uses_view_zero(tmp_path, capsys, features):
    path = tmp_path / "views.npz"
    views = np.stack([features, features[::-1] ** 2])
    save_feature_file(path, views, np.zeros(120, dtype=np.int64))
    assert main(["analyze", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert "view 0" in captured.err
    out = json.loads(captured.out)
    assert out["views"] == 2 and out["view"] == 0
    assert out["sve"] == pytest.approx(_metrics(features)[1], rel=1e-9)


def test_text_output(tmp_path, capsys, features):
    path = tmp_path / "f.npz"
    save_feature_file(path, features, np.zeros(120, dtype=np.int64))
    assert main(["analyze", str(path), "--top", "2"]) == 0
    text = capsys.readouterr().out
    _, sve, lsvr = _metrics(features)
    assert f"SVE             {sve:.4f}" in text
    assert f"LSVR            {lsvr:.4f}" in text
    assert "N=120, D=16" in text and "top 2 singular values" in text


@pytest.mark.parametrize(
    "make,match",
    [
        (None, "not found"),
        (lambda: np.full((4, 3), np.nan), "NaN"),
        (lambda: np.ones(4), "2-D or 3-D"),
        (lambda: np.ones((4, 3)), "no variance"),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path, capsys, make, match):
    path = tmp_path / "bad.npz"
    if make is not None:
        save_feature_file(path, make(), np.zeros(4, dtype=np.int64))
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmtune analyze: error:") and match in err
    assert err.count("\n") == 1


def test_negative_top_is_rejected(tmp_path, capsys, features):
    path = tmp_path / "f.npz"
    save_feature_file(path, features, np.zeros(120, dtype=np.int64))
    assert main(["analyze", str(path), "--top", "-1"]) == 2
    assert "--top" in capsys.readouterr().err
