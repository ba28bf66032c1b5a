"""The environment record and its place in study.json."""

import json
from importlib import metadata

import pandas as pd
import torch
from threadpoolctl import threadpool_info

from nmtune import study
from nmtune.environment import environment


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
    # The record is written whatever the grid computes: skip the work itself.
    monkeypatch.setattr(study._Runner, "preflight", lambda self: None)
    monkeypatch.setattr(study._Runner, "run", lambda self: {"results": pd.DataFrame()})
    cfg = study.load_config("default")
    study.run_study(cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "study.json").read_text())
    assert record["environment"]["libraries"]["torch"] == metadata.version("torch")
    assert record["environment"]["cpu"] == environment()["cpu"]
