"""The environment record and its place in study.json."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from threadpoolctl import threadpool_info

from nmtune import study
from nmtune._validation import NMTuneError
from nmtune.environment import environment, pinned_threads


def test_environment_reports_what_the_libraries_say(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = environment()
    finally:
        torch.set_num_threads(before)
    assert env["torch"]["num_threads"] == 1
    assert env["torch"]["deterministic_algorithms"] == torch.are_deterministic_algorithms_enabled()
    assert env["libraries"]["numpy"] == metadata.version("numpy")
    assert env["libraries"]["statsmodels"] == metadata.version("statsmodels")
    pools = sorted((p["internal_api"], p["prefix"], p["version"]) for p in threadpool_info())
    assert [(p["internal_api"], p["prefix"], p["version"]) for p in env["blas"]] == pools
    assert env["thread_variables"]["OMP_NUM_THREADS"] == "1"
    assert env["cpu"]["model"] and env["cpu"]["logical_cpus"] >= 1
    json.dumps(env)  # study.json must be able to hold it as it is


def test_study_json_records_the_environment(tmp_path, monkeypatch):
    _skip_the_cells(monkeypatch)  # the record is written whatever the grid computes
    cfg = study.load_config("default")
    study.run_study(cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "study.json").read_text())
    assert record["environment"]["libraries"]["torch"] == metadata.version("torch")
    assert record["environment"]["cpu"] == environment()["cpu"]


# A study small enough to run twice in seconds, with every stage that sums floats in a
# thread pool: pre-training (conv backward), the spectrum (SVD), and the tuners.
TWO_THREAD_STUDY = {
    "name": "threads",
    "seeds": [0],
    "backbone": {"name": "resnet8", "kwargs": {"width": 4}},
    "pretrain": {"dataset": "digits", "epochs": 1, "batch_size": 64, "eval_split": "test"},
    "noise": {"kind": "symmetric", "ratios": [0.0, 0.3]},
    "tasks": [{"name": "digits",
               "train": {"dataset": "digits", "split": "train", "limit": 300},
               "test": {"dataset": "digits", "split": "test", "limit": 200}}],
    "methods": {"lp": {"Cs": 3}, "nmtune": {"epochs": 2}},
}


def _study_under(omp_threads: str, config: Path, out: Path) -> pd.DataFrame:
    env = {**os.environ, "OMP_NUM_THREADS": omp_threads, "MKL_NUM_THREADS": omp_threads,
           "OPENBLAS_NUM_THREADS": omp_threads, "NMTUNE_CACHE": str(out / "unused-cache")}
    done = subprocess.run(
        [sys.executable, "-m", "nmtune", "study", str(config), "--out", str(out), "--quiet",
         "--no-report"], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    return pd.read_csv(out / "results.csv").drop(columns=["fit_seconds"])


@pytest.mark.parametrize("threads", [0, "2", True])
def test_threads_must_be_a_positive_integer(threads):
    with pytest.raises(NMTuneError, match="threads must be a positive integer"):
        study.config_from_dict({**TWO_THREAD_STUDY, "threads": threads})


def test_pinned_threads_sets_torch_and_the_blas_pools_then_restores_them():
    before = torch.get_num_threads()
    with pinned_threads(3):
        assert torch.get_num_threads() == 3
        assert all(p["num_threads"] == 3 for p in threadpool_info())
    assert torch.get_num_threads() == before


def test_the_thread_environment_does_not_change_a_study(tmp_path):
    # The study pins its own compute threads (``threads``, default 1), so the caller's
    # OMP_NUM_THREADS must not reach a single bit of the results.
    config = tmp_path / "threads.yaml"
    config.write_text(yaml.safe_dump(TWO_THREAD_STUDY))
    one = _study_under("1", config, tmp_path / "one")
    two = _study_under("2", config, tmp_path / "two")
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    for out in ("one", "two"):
        record = json.loads((tmp_path / out / "study.json").read_text())
        assert record["threads"] == 1
        assert record["environment"]["torch"]["num_threads"] == 1


def _skip_the_cells(monkeypatch):
    monkeypatch.setattr(study.StudyRunner, "preflight", lambda self: None)
    monkeypatch.setattr(study.run, "study_cells", lambda config: {})


def test_a_folder_computed_with_other_threads_is_not_resumed(tmp_path, monkeypatch):
    _skip_the_cells(monkeypatch)
    cfg = study.load_config("default")
    study.run_study(cfg, tmp_path, progress=False)  # threads: 1, as default.yaml says
    (tmp_path / "cells").mkdir()
    before = (tmp_path / "config.yaml").read_bytes()
    two = study.config_from_dict({**cfg.raw, "threads": 2})
    with pytest.raises(NMTuneError, match="computed with threads: 1"):
        study.run_study(two, tmp_path, progress=False)
    assert (tmp_path / "config.yaml").read_bytes() == before  # nothing rewritten


def test_an_unreadable_earlier_config_is_replaced_not_a_traceback(tmp_path, monkeypatch, capsys):
    _skip_the_cells(monkeypatch)
    (tmp_path / "config.yaml").write_bytes(b"\xff\xfe: [unclosed")
    cfg = study.load_config("default")
    study.run_study(cfg, tmp_path, progress=False)
    assert "not a readable config" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == cfg.raw
