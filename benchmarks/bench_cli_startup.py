"""Start-up cost of ``nmtune --help``, ``nmtune datasets`` and ``nmtune backbones``.

Each command runs ``--repeat`` times in a fresh interpreter, the commands interleaved so that
all of them see the same machine load. Reported per command: the median wall time and the
median CPU time (user + system of the child), and CPU time as a multiple of two peers from the
same run: ``python -c pass`` (the interpreter's own start-up, the floor) and ``python -c
"import torch"`` (what every verb paid when the package imported torch at start-up). With
``--baseline-src DIR`` the three verbs also run from another checkout's ``src`` (e.g. the code
before this change), and the last column is that checkout's CPU time over this one's.

Run: ``python benchmarks/bench_cli_startup.py [--repeat 10] [--baseline-src /path/to/old/src]``
(about a minute with the baseline).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
VERBS = (["--help"], ["datasets"], ["backbones"])


def run_once(argv: list[str], src: Path) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one fresh ``python argv`` with ``src`` first."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src directory")
    args = parser.parse_args()

    commands = {"python -c pass": (["-c", "pass"], SRC),
                'python -c "import torch"': (["-c", "import torch"], SRC)}
    for verb in VERBS:
        commands[f"nmtune {' '.join(verb)}"] = (["-m", "nmtune", *verb], SRC)
        if args.baseline_src:
            commands[f"nmtune {' '.join(verb)} (baseline)"] = (
                ["-m", "nmtune", *verb], args.baseline_src)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, (argv, src) in commands.items():
            times[name].append(run_once(argv, src))

    wall = {name: statistics.median(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in times.items()}
    floor, torch_cpu = cpu["python -c pass"], cpu['python -c "import torch"']
    print(f"median of {args.repeat} fresh runs each, interleaved; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'command':<34} {'wall s':>7} {'CPU s':>7} {'CPU / pass':>11} {'CPU / torch':>12}"
          f" {'baseline / this':>16}")
    for name in commands:
        base = cpu.get(f"{name} (baseline)")
        ratio = f"{base / cpu[name]:.1f}x" if base else ""
        print(f"{name:<34} {wall[name]:>7.3f} {cpu[name]:>7.3f} {cpu[name] / floor:>10.1f}x "
              f"{cpu[name] / torch_cpu:>11.2f}x {ratio:>16}")


if __name__ == "__main__":
    main()
