"""``nmtune compare``: a rerun agrees, a doctored run does not, bad input exits 2."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nmtune.cli import main
from nmtune.compare import compare_runs


def _write(root, df, environment=None):
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "results.csv", index=False)
    if environment is not None:
        (root / "study.json").write_text(json.dumps({"environment": environment}))
    return root


@pytest.fixture
def runs(tmp_path, make_results):
    """The same study twice: the rerun draws fresh seed-to-seed noise of the same size."""
    a = _write(tmp_path / "a", make_results(spread=0.01, rng_seed=0),
               {"cpu": {"model": "X"}, "blas": [{"num_threads": 2}]})
    b = _write(tmp_path / "b", make_results(spread=0.01, rng_seed=1),
               {"cpu": {"model": "Y"}, "blas": [{"num_threads": 2}]})
    return a, b


def test_a_rerun_agrees(runs, capsys):
    a, b = runs
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "runs agree" in out and "cells: 36 of 36 agree" in out
    assert "environment differs: cpu.model: X | Y" in out


def test_the_same_run_agrees_exactly(runs):
    a, _ = runs
    result = compare_runs(a, a)
    assert result.agree and (result.cells["diff"] == 0).all()


def test_a_doctored_cell_is_flagged(runs, tmp_path, make_results, capsys):
    a, _ = runs
    doctored = make_results(spread=0.01, rng_seed=1, shift={
        (("task", "digits"), ("method", "lp"), ("noise_ratio", 0.1)): 6.0})
    b = _write(tmp_path / "doctored", doctored)
    assert main(["compare", str(a), str(b), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    flagged = [c for c in result["cells"] if not c["agree"]]
    assert [(c["task"], c["method"], c["noise_ratio"]) for c in flagged] == [
        ("digits", "lp", 0.1)]
    assert flagged[0]["diff"] == pytest.approx(6.0, abs=1.5)


def test_a_doctored_claim_is_flagged(runs, tmp_path, make_results):
    a, _ = runs
    # NMTune loses its 2-point lead over LP everywhere: cells and the claim both disagree.
    b = _write(tmp_path / "doctored", make_results(spread=0.01, rng_seed=1, shift={
        (("method", "nmtune"),): -3.0}))
    result = compare_runs(a, b)
    claims = result.claims.set_index("claim")
    assert claims.loc["NMTune beats LP (ID)", "verdict_a"] == "reproduced"
    assert claims.loc["NMTune beats LP (ID)", "verdict_b"] == "contradicted"
    assert not claims.loc["NMTune beats LP (ID)", "agree"]
    assert claims.loc["noise hurts OOD", "agree"]
    assert not result.agree


def test_cell_p_value_is_the_pooled_two_sample_t_test(tmp_path):
    # One series at one noise ratio: the pooled spread is the classic two-sample one.
    acc_a, acc_b = [0.80, 0.82, 0.79, 0.81], [0.83, 0.85, 0.82]
    rows = lambda acc: pd.DataFrame({"seed": range(len(acc)), "kind": "id", "task": "t",  # noqa: E731
                                     "method": "lp", "accuracy": acc})
    a, b = _write(tmp_path / "a", rows(acc_a)), _write(tmp_path / "b", rows(acc_b))
    cell = compare_runs(a, b, alpha=0.01).cells.iloc[0]
    ref = stats.ttest_ind(np.array(acc_b) * 100, np.array(acc_a) * 100, equal_var=True)
    assert cell["p"] == pytest.approx(ref.pvalue)
    assert cell["diff"] == pytest.approx(100 * (np.mean(acc_b) - np.mean(acc_a)))
    assert cell["agree"] == (ref.pvalue >= 0.01)


def test_missing_cells_disagree(runs, tmp_path, make_results):
    a, _ = runs
    fewer = make_results(spread=0.01, rng_seed=1)
    b = _write(tmp_path / "fewer", fewer[fewer["task"] != "digits"])
    result = compare_runs(a, b)
    assert result.only_a == 12 and result.only_b == 0 and not result.agree


@pytest.mark.parametrize(
    "make_b,match",
    [
        (lambda root: root.mkdir(), "no results.csv"),
        (lambda root: _write(root, pd.DataFrame({"seed": [0], "kind": ["id"],
                                                 "method": ["lp"]})), "accuracy"),
        (lambda root: _write(root, pd.DataFrame({"seed": [0], "kind": ["id"], "method": ["lp"],
                                                 "accuracy": [85.0]})), r"\[0, 1\]"),
        (lambda root: _write(root, pd.DataFrame({"seed": [0], "kind": ["id"], "method": ["x"],
                                                 "accuracy": [0.5]})), "share no cell"),
    ],
)
def test_bad_input_exits_2(runs, tmp_path, capsys, make_b, match):
    a, _ = runs
    make_b(tmp_path / "bad")
    assert main(["compare", str(a), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmtune compare: error:") and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(match, err)


def test_a_run_without_an_environment_record_is_not_listed_key_by_key(runs, capsys):
    # A folder without study.json has no record to compare: not every key listed as "| None".
    a, b = runs
    (b / "study.json").unlink()
    assert main(["compare", str(a), str(b)]) == 0
    assert "environment differs" not in capsys.readouterr().out
