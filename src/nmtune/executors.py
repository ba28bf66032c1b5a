"""Executors of a study's cells: one after another in this process, or as Ray tasks.

Both call the one implementation of a cell, the study runner's ``run_cell``
(:mod:`nmtune.study`, which hands its runner and cell graph in: nothing here imports it), in
the dependency order of :func:`nmtune.study.study_cells`, and both leave the work in the same
content-addressed caches under the study folder (cell JSON files, the feature cache,
pre-training checkpoints). A cell is idempotent: run twice, by a retried Ray task or by a
resubmitted study, it reads back what the first run wrote, so nothing is computed twice and
the tables are the same whichever executor (or mix of executors) produced them.

An executor is a function ``(runner, graph) -> (outputs, seconds)`` mapping each cell to its
output and to the wall seconds it took in this run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ._validation import NMTuneError

EXECUTORS = ("in-process", "ray")
#: How often Ray re-runs a cell whose worker died (a crash, a lost node); a cell's own
#: exception is not retried: it would fail the same way.
RAY_MAX_RETRIES = 3


class _Progress:
    """One tqdm bar over the study's cells: done, running and failed."""

    def __init__(self, total: int, name: str, enabled: bool):
        self.bar = tqdm(total=total, desc=f"study {name}", unit="cell", disable=not enabled)
        self.done = 0

    def show(self, done: int, running: int, failed: int, current: str = "") -> None:
        self.bar.update(done - self.done)
        self.done = done
        text = f"running {running} failed {failed}"
        self.bar.set_postfix_str(f"{text}: {current}" if current else text)

    def close(self) -> None:
        self.bar.close()


def run_in_process(runner, graph: dict) -> tuple[dict, dict]:
    """Run every cell here, in graph order (the study's default)."""
    outputs, seconds = {}, {}
    progress = _Progress(len(graph), runner.cfg.name, runner.progress)
    try:
        for cell, deps in graph.items():
            progress.show(len(outputs), 1, 0, cell.name)
            t0 = time.perf_counter()
            outputs[cell] = runner.run_cell(cell, outputs[deps[0]] if deps else None)
            seconds[cell] = time.perf_counter() - t0
        progress.show(len(outputs), 0, 0)
    finally:
        progress.close()
    return outputs, seconds


def _ray():
    try:
        import ray
    except ImportError:
        raise NMTuneError("--executor ray needs Ray: pip install 'nmtune[ray]'") from None
    return ray


#: In a Ray worker process: the runner of the study it ran last, so that datasets, the
#: backbone and features stay loaded between that study's cells.
_WORKER_RUNNER: dict[str, Any] = {}


def _ray_cell(runner_cls, config, out: str, cell, point: tuple | None,
              *_after) -> tuple[Any, float]:
    """A Ray task: run ``cell`` of ``config`` into ``out`` with a ``runner_cls`` of this worker;
    return its output and seconds. ``point`` is its pretrain cell's return; ``_after``: those
    of the other cells it waits for, whose work is in the caches."""
    from .environment import pinned_threads

    key = json.dumps([out, config.raw], sort_keys=True, default=str)
    if _WORKER_RUNNER.get("key") != key:
        _WORKER_RUNNER.update(key=key, runner=runner_cls(config, Path(out), progress=False))
    # The study's `threads`, not the cell's CPU reservation: thread counts change float sums,
    # and a cell must give the same bits on Ray as in-process (reserve as many CPUs as threads).
    with pinned_threads(config.threads):
        t0 = time.perf_counter()
        value = _WORKER_RUNNER["runner"].run_cell(cell, None if point is None else point[0])
        return value, time.perf_counter() - t0


def _options(ray, resources, stage: str, placement_groups: list) -> dict:
    """The Ray task options of a cell of ``stage``: its CPUs and GPUs, and for multi-GPU
    pre-training a one-node placement group holding them for the torchrun it launches."""
    req = getattr(resources, stage)
    opts = {"num_cpus": req.cpus, "num_gpus": req.gpus, "max_retries": RAY_MAX_RETRIES}
    if stage == "pretrain" and req.gpus > 1:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([{"CPU": req.cpus, "GPU": req.gpus}], strategy="STRICT_PACK")
        placement_groups.append(group)
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, 0)
    return opts


def _root_cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    return lines[-1] if not isinstance(cause, NMTuneError) else str(cause)


def run_on_ray(runner, graph: dict, address: str | None = None) -> tuple[dict, dict]:
    """Submit every cell as a Ray task that waits for the cells it needs, then collect them.

    Connects to the cluster at ``address`` (``auto``: the one this node belongs to), to the
    Ray session this process already started, or else starts a local one. The study folder
    must be on a path every node shares. A worker that dies mid-cell is retried
    (:data:`RAY_MAX_RETRIES`); a cell that raises fails with the cells that need it, the rest
    run on, and the error names the first failure (a rerun resumes from the caches).
    """
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(_ray_cell)
    config_ref = ray.put(runner.cfg)
    out = str(runner.out.resolve())
    refs, groups = {}, []
    for cell, deps in graph.items():
        opts = _options(ray, runner.cfg.resources, cell.stage, groups)
        refs[cell] = remote.options(name=cell.name, **opts).remote(
            type(runner), config_ref, out, cell, *([refs[d] for d in deps] or [None]))
    pending = {ref: cell for cell, ref in refs.items()}
    outputs, seconds, failures = {}, {}, []
    progress = _Progress(len(graph), runner.cfg.name, runner.progress)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    outputs[cell], seconds[cell] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 -- reported below, with its cell
                    failures.append((cell, exc))
            failed = {c for c, _ in failures}
            running = sum(all(d in outputs for d in graph[c]) for c in pending.values())
            progress.show(len(outputs), running, len(failed))
    finally:
        progress.close()
        for group in groups:
            ray.util.remove_placement_group(group)
    if failures:
        failed = {c for c, _ in failures}
        cell, exc = next((c, e) for c, e in failures if not failed & set(graph[c]))
        raise NMTuneError(f"{len(failures)} of {len(graph)} cells failed (a rerun resumes the "
                          f"rest); first: {cell.name}: {_root_cause(exc)}")
    return outputs, seconds


def get_executor(name: str, address: str | None = None) -> Callable:
    """The executor called ``name`` (:data:`EXECUTORS`), checked before any work."""
    if name == "in-process":
        if address is not None:
            raise NMTuneError("--address needs --executor ray")
        return run_in_process
    if name == "ray":
        _ray()
        return lambda runner, graph: run_on_ray(runner, graph, address)
    raise NMTuneError(f"unknown executor {name!r}; expected one of {EXECUTORS}")


__all__ = ["EXECUTORS", "get_executor", "run_in_process", "run_on_ray"]
