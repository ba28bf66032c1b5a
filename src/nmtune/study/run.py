"""Running a study: its cells through an executor into one folder of tables."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import pandas as pd
import yaml

from .. import __version__
from .._io import write_bytes_atomic, write_json_atomic
from .._validation import NMTuneError
from ..environment import environment, pinned_threads
from ..results import tidy_table
from .cells import StudyRunner, study_cells
from .config import StudyConfig


def _tables(graph: dict, outputs: dict) -> dict[str, pd.DataFrame]:
    """The study's tables from its cells' outputs, in the graph's order whatever the order
    the cells ran in."""
    results, spectra, pretrain_rows = [], [], []
    for cell in graph:
        value = outputs[cell]
        if cell.stage == "pretrain" and value["metrics"] is not None:
            grid = value["grid"]
            pretrain_rows.append({**grid, **{k: v for k, v in value["metrics"].items()
                                             if k not in grid}})
        elif cell.stage == "spectrum":
            spectra.append(value)
        elif cell.stage == "tune":
            results.extend(value)
    return {"results": tidy_table(results), "spectrum": tidy_table(spectra),
            "pretrain": tidy_table(pretrain_rows)}


def _earlier_config(path: Path) -> dict | None:
    """The config an earlier run left in ``path``; None when there is none or it is unreadable
    (it is rewritten below, and the cells it describes are checked on their own)."""
    if not path.is_file():
        return None
    try:
        earlier = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        print(f"note: {path} is not a readable config; it is replaced")
        return None
    return earlier if isinstance(earlier, dict) else None


def _check_same_threads(earlier: dict, config, out: Path) -> None:
    """Refuse to resume work done with another thread count: cell keys do not hold it (the
    same inputs), and reusing those cells would mix float sums of two thread counts in one
    table, which is then no longer bit-reproducible."""
    before = earlier.get("threads", 1)
    done = any((out / part).exists() for part in ("cells", "pretrain", "features"))
    if before != config.threads and done:
        raise NMTuneError(
            f"{out} was computed with threads: {before}, and this config asks for "
            f"{config.threads}; results would mix both. Give another --out, or threads: {before}"
        )


def run_study(config: StudyConfig, out_dir: str | Path, *, progress: bool = True,
              executor: str = "in-process", address: str | None = None) -> dict:
    """Run (or resume) ``config`` into ``out_dir``; return the tables as DataFrames.

    ``executor`` is ``in-process`` (one cell after another here) or ``ray`` (every cell a Ray
    task on the cluster at ``address``, or a local one; needs ``nmtune[ray]`` and ``out_dir``
    on a path every node shares). Both run the same cells into the same caches, so their
    tables are identical and either resumes the other's work.

    Writes ``results.csv``, ``spectrum.csv``, ``pretrain.csv`` (when pre-training),
    ``timings.csv`` (seconds per cell this run) and ``study.json`` atomically. Re-running with
    the same config recomputes nothing that is already done.
    """
    from ..executors import get_executor

    run_cells = get_executor(executor, address)  # a missing extra fails before any work
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NMTuneError(f"{out} is a file, not a folder: give the study a results folder")
    runner = StudyRunner(config, out, progress)
    runner.preflight()  # before anything is written: a missing dataset leaves no trace
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    earlier = _earlier_config(config_path)
    if earlier is not None and earlier != config.raw:
        _check_same_threads(earlier, config, out)
        # Cells are keyed by their inputs, so a changed config is safe to run here; say so.
        print(f"note: {out} holds an earlier config; cells that still apply are reused")
    write_bytes_atomic(config_path, yaml.safe_dump(config.raw, sort_keys=False).encode())
    started = time.time()
    graph = study_cells(config)
    with pinned_threads(config.threads):  # results must not depend on OMP_NUM_THREADS
        outputs, seconds = run_cells(runner, graph)
        env = environment()  # inside: the thread counts the cells ran with
    tables = _tables(graph, outputs)
    tables["timings"] = pd.DataFrame(
        [{"stage": c.stage, "cell": c.name, "seconds": round(seconds[c], 3)} for c in graph])
    for name, df in tables.items():
        if not df.empty:
            write_bytes_atomic(out / f"{name}.csv", df.to_csv(index=False).encode())
    write_json_atomic(out / "study.json", {
        "name": config.name, "config": config.raw, "nmtune_version": __version__,
        "executor": executor,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                   f"python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds_this_run": round(time.time() - started, 1),
        "threads": config.threads,
        "environment": env,
    })
    return tables
