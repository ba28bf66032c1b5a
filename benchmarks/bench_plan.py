"""``nmtune study --plan``'s CPU estimate against the study's measured time per stage.

Plans the study (its calibration runs here, now), then runs it in-process from scratch into
a fresh folder and sums ``timings.csv`` per stage; prints planned and measured seconds side
by side with their ratio. Run both on the same, otherwise idle machine: the calibration
measures the machine as it is.

    python benchmarks/bench_plan.py [--config default] [--small]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _small import study_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--small", action="store_true",
                        help="seed 0, noise ratios 0 and 0.3 only (2 of 10 grid points)")
    args = parser.parse_args()

    import torch

    from nmtune.plan import plan_study
    from nmtune.study import run_study

    torch.set_num_threads(1)
    config = study_config(args.config, args.small)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    plan = plan_study(config)
    plan_s = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="nmtune-bench-plan-")) / config.name
    t0 = time.perf_counter()
    tables = run_study(config, out, progress=False)
    wall = time.perf_counter() - t0
    measured = tables["timings"].groupby("stage")["seconds"].sum()
    print(f"config {config.name}: {len(plan.cells)} cells; plan took {plan_s:.1f} s; "
          f"load average before: {load:.2f}; 1 torch thread")
    print(f"{'stage':<9} {'planned s':>10} {'measured s':>11} {'measured/planned':>17}")
    total_p = 0.0
    for stage, cost in plan.stages.items():
        total_p += cost.cpu_seconds
        print(f"{stage:<9} {cost.cpu_seconds:>10.1f} {measured.get(stage, 0.0):>11.1f} "
              f"{measured.get(stage, 0.0) / max(cost.cpu_seconds, 1e-9):>17.2f}")
    print(f"{'total':<9} {total_p:>10.1f} {measured.sum():>11.1f} "
          f"{measured.sum() / total_p:>17.2f}   (study wall time {wall:.1f} s)")


if __name__ == "__main__":
    main()
