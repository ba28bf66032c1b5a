"""Wall time of the embedded default study against its 10-minute budget on 2 CPU cores.

Runs ``configs/default.yaml`` from scratch into a fresh folder (no cached cells, no cached
features) and prints the time per stage from the study's own tables, the total, and the
ratio to the budget. The run is a real study: its report lands beside the results.

    python benchmarks/bench_default_study.py [--out DIR] [--config NAME_OR_PATH]

``--config clip`` times the contrastive study the same way (its zero-shot cells appear as
the method ``zeroshot``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

BUDGET_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: temp)")
    parser.add_argument("--config", default="default")
    args = parser.parse_args()

    from nmtune.report import build_report
    from nmtune.study import load_config, run_study

    out = args.out or Path(tempfile.mkdtemp(prefix="nmtune-bench-study-"))
    if out.exists():
        shutil.rmtree(out)
    config = load_config(args.config)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    tables = run_study(config, out, progress=False)
    study_s = time.perf_counter() - start
    build_report(out)
    total_s = time.perf_counter() - start

    results, pretrain = tables["results"], tables["pretrain"]
    # One fit serves the ID and all OOD rows of a task: count each fit once.
    fits = results.drop_duplicates(["noise_ratio", "seed", "train_set", "method"])
    pretrain_s = float(pretrain["seconds"].sum()) if "seconds" in pretrain else 0.0
    fit_s = fits.groupby("method")["fit_seconds"].sum()
    print(f"config {args.config}: {len(results)} result rows, {len(fits)} fits, "
          f"{len(pretrain)} pre-trained models; load average before: {load_before:.2f}")
    print(f"{'stage':<36} {'seconds':>8}")
    print(f"{'pre-training (all models)':<36} {pretrain_s:>8.1f}")
    for method, s in fit_s.items():
        print(f"{'tuning: ' + method:<36} {s:>8.1f}")
    other = study_s - pretrain_s - float(fit_s.sum())
    print(f"{'extraction, spectra, data, overhead':<36} {other:>8.1f}")
    print(f"{'report':<36} {total_s - study_s:>8.1f}")
    print(f"{'total':<36} {total_s:>8.1f}")
    print(f"ratio to the {BUDGET_S:.0f} s budget: {total_s / BUDGET_S:.2f} "
          f"({'within' if total_s <= BUDGET_S else 'OVER'} budget); results in {out}")


if __name__ == "__main__":
    main()
