"""The study on Ray (a local cluster of 2 worker processes): the same tables as in-process,
a worker killed mid-cell retried to the same table, and a failed study resumed from the
caches without redoing any finished cell."""

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray

from nmtune._validation import NMTuneError
from nmtune.study import config_from_dict, run_study

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_STUDY as TINY  # noqa: E402
from conftest import results_table  # noqa: E402

pytestmark = pytest.mark.slow


def _install_faults():
    """Runs in every Ray worker: wraps the atomic writer the study's cells use, so that the
    test's control file can kill the worker or fail a cell after the cell has computed and
    before its record is written (mid-cell)."""
    import nmtune.study.cells as cells

    real_write = cells.write_json_atomic

    def faulty_write(path, record):
        control_file = Path(os.environ["NMTUNE_TEST_FAULTS"])
        control = json.loads(control_file.read_text()) if control_file.is_file() else {}
        if Path(path).name.startswith("tune-"):
            if control.get("mode") == "kill":
                try:  # only the first attempt dies; the retry finds the marker
                    os.close(os.open(control["marker"], os.O_CREAT | os.O_EXCL))
                    os._exit(1)
                except FileExistsError:
                    pass
            if control.get("mode") == "fail" and record["rows"][0]["method"] == "nmtune":
                raise RuntimeError("injected failure")
        return real_write(path, record)

    cells.write_json_atomic = faulty_write


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "control.json"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={
        "env_vars": {"NMTUNE_TEST_FAULTS": str(path), "OMP_NUM_THREADS": "1"},
        "worker_process_setup_hook": _install_faults})
    yield path
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    import torch

    torch.set_num_threads(1)  # the Ray workers' thread count: identical floating point
    out = tmp_path_factory.mktemp("in-process")
    run_study(config_from_dict(TINY), out, progress=False)
    return out


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    return {name: results_table(out, name) for name in ("results", "spectrum", "pretrain")}


def _assert_same_tables(a: Path, b: Path) -> None:
    for (name, x), y in zip(_tables(a).items(), _tables(b).values(), strict=True):
        pd.testing.assert_frame_equal(x, y, obj=name)


def _ray_study(out: Path) -> None:
    run_study(config_from_dict(TINY), out, progress=False, executor="ray")


def test_ray_study_equals_in_process(control, in_process, tmp_path):
    control.write_text("{}")
    _ray_study(tmp_path)
    _assert_same_tables(tmp_path, in_process)
    timings = pd.read_csv(tmp_path / "timings.csv")
    assert sorted(set(timings["stage"])) == ["extract", "pretrain", "spectrum", "tune"]


def test_worker_killed_mid_cell_is_retried(control, in_process, tmp_path):
    marker = tmp_path / "killed"
    control.write_text(json.dumps({"mode": "kill", "marker": str(marker)}))
    _ray_study(tmp_path / "out")
    assert marker.exists()  # a worker did die, after computing a cell and before writing it
    _assert_same_tables(tmp_path / "out", in_process)


def _work(out: Path) -> dict:
    """Each finished file's modification time; a config file's content (a resumed run
    rewrites its copy of the settings, unchanged)."""
    return {p: p.read_bytes() if p.name in ("config.json", "config.yaml") else
            p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_failed_study_resumes_from_the_caches(control, in_process, tmp_path):
    control.write_text(json.dumps({"mode": "fail"}))
    with pytest.raises(NMTuneError, match="2 of 16 cells failed.*tune digits nmtune.*injected"):
        _ray_study(tmp_path)
    assert not (tmp_path / "results.csv").exists()
    done = _work(tmp_path)
    assert len(list(tmp_path.glob("cells/tune-*.json"))) == 4  # lp and mlp of both models
    control.write_text("{}")
    _ray_study(tmp_path)
    # Every file the first run finished (cells, features, checkpoints) was reused untouched.
    assert {p: v for p, v in _work(tmp_path).items() if p in done} == done
    assert len(list(tmp_path.glob("cells/tune-*.json"))) == 6
    _assert_same_tables(tmp_path, in_process)


def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(NMTuneError, match=r"nmtune\[ray\]"):
        run_study(config_from_dict(TINY), tmp_path / "out", progress=False, executor="ray")
    assert not (tmp_path / "out").exists()
