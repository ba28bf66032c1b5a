"""The study in-process against Ray with 1 and 2 worker processes (one thread each).

Each run starts from scratch in a fresh folder (no cached cells or features): in-process,
then a local Ray of ``num_cpus=1`` and of ``num_cpus=2`` (every cell asks for 1 CPU, so that
is 1 and 2 cells at a time). Prints wall times side by side, the Ray overhead at 1 worker
and the 2-worker scaling ratio, and checks that all three results tables agree.

    python benchmarks/bench_ray_study.py [--config default] [--small]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _small import study_config


def _table(out: Path):
    import pandas as pd

    df = pd.read_csv(out / "results.csv").drop(columns=["fit_seconds"])
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--small", action="store_true",
                        help="seed 0, noise ratios 0 and 0.3 only (2 of 10 grid points)")
    args = parser.parse_args()

    import pandas as pd
    import ray
    import torch

    from nmtune.study import run_study

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    config = study_config(args.config, args.small)
    root = Path(tempfile.mkdtemp(prefix="nmtune-bench-ray-"))
    walls = {}
    load = os.getloadavg()[0]
    for label, workers in (("in-process", 0), ("ray, 1 worker", 1), ("ray, 2 workers", 2)):
        if workers:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        run_study(config, root / label, progress=False,
                  executor="ray" if workers else "in-process")
        walls[label] = time.perf_counter() - t0
        if workers:
            ray.shutdown()
    for label in walls:
        pd.testing.assert_frame_equal(_table(root / label), _table(root / "in-process"))
    print(f"config {config.name}: load average before {load:.2f} on {os.cpu_count()} cores; "
          "results.csv identical in all three runs")
    print(f"{'run':<16} {'wall s':>8} {'vs in-process':>14}")
    for label, wall in walls.items():
        print(f"{label:<16} {wall:>8.1f} {walls['in-process'] / wall:>13.2f}x")
    print(f"scaling, 2 workers vs 1: {walls['ray, 1 worker'] / walls['ray, 2 workers']:.2f}x")


if __name__ == "__main__":
    main()
