"""Extraction throughput (``nmtune.features.extract``, cache off) vs a bare forward pass.

The peer is the same backbone module, in eval mode under ``torch.inference_mode`` (and
channels-last on CPU, as the backbone runs it), over the same batches *already preprocessed*:
so the ratio charges ``extract`` with everything it adds -- slicing, preprocessing, checks,
copying into the output. Target: >= 90%. Each side runs ``--repeats`` times, alternating, and
the medians are compared, both of wall time and of this process's CPU time (on a shared
machine the CPU-time ratio is the steadier one: it does not count time spent waiting for a
core). The cache-hit time is that of a second
``extract`` of the same data into a temporary cache directory (it verifies the sha256 of the
cached array and memory-maps it).

Run: ``python benchmarks/bench_extract.py`` (about 3 minutes on 2 cores);
``--quick`` for a smoke run on small subsets.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

# isort: off
import nmtune  # noqa: F401  before torch: sets OMP_WAIT_POLICY, see nmtune/__init__.py
import torch
# isort: on

from nmtune._torch import autocast, resolve_device, tune_cpu_allocator
from nmtune.backbones import create_backbone
from nmtune.data import load_dataset
from nmtune.features import extract


class Clock:
    """Wall and process-CPU seconds of a ``with`` block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def bare_forward(backbone, batches: list[torch.Tensor]) -> Clock:
    """Wall and CPU seconds for the module alone over preprocessed batches."""
    module, device = backbone.module.eval(), backbone.device
    memory_format = torch.channels_last if device.type == "cpu" else torch.preserve_format
    batches = [b.to(device).contiguous(memory_format=memory_format) for b in batches]
    with Clock() as clock, torch.inference_mode(), autocast(device):
        for x in batches:
            module(x).float().cpu()
    return clock


def extract_seconds(backbone, dataset, batch_size: int, device) -> Clock:
    with Clock() as clock:
        extract(
            backbone, dataset, batch_size=batch_size, device=device, cache_dir=False, progress=False
        )
    return clock


def measure(label, backbone, dataset, batch_size: int, repeats: int, device) -> dict:
    inputs = dataset.inputs
    batches = [
        backbone.preprocess(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)
    ]
    backbone.to(device)
    # Warm-up on every batch shape (the last batch is usually smaller): oneDNN creates its
    # primitives per shape, and that one-off cost must not land on whichever side runs first.
    bare_forward(backbone, [batches[0], batches[-1]])
    bare, ours = [], []
    for _ in range(repeats):
        bare.append(bare_forward(backbone, batches))
        ours.append(extract_seconds(backbone, dataset, batch_size, device))
    with tempfile.TemporaryDirectory() as cache:
        extract(
            backbone, dataset, batch_size=batch_size, device=device, cache_dir=cache, progress=False
        )
        tick = time.perf_counter()
        hit = extract(
            backbone, dataset, batch_size=batch_size, device=device, cache_dir=cache, progress=False
        )
        hit_seconds = time.perf_counter() - tick
        assert hit.meta["cache"] == "hit"
    n = len(dataset)
    bare_s, ours_s = (statistics.median(c.wall for c in runs) for runs in (bare, ours))
    bare_cpu, ours_cpu = (statistics.median(c.cpu for c in runs) for runs in (bare, ours))
    return {
        "case": label,
        "n": n,
        "bare img/s": n / bare_s,
        "extract img/s": n / ours_s,
        "ratio (wall)": bare_s / ours_s,
        "ratio (cpu)": bare_cpu / ours_cpu,
        "cache hit s": hit_seconds,
        "features": "x".join(map(str, hit.features.shape)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subsets, one repeat")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    repeats = 1 if args.quick else args.repeats
    mnist_n, effnet_n = (2000, 128) if args.quick else (20000, 1024)

    cases = [
        (
            "resnet8 / MNIST train",
            create_backbone("resnet8"),
            load_dataset("mnist", "train", mnist_n),
            256,
        ),
        (
            "efficientnet-lite0 96px / MNIST",
            create_backbone("efficientnet-lite0", image_size=96),
            load_dataset("mnist", "test", effnet_n),
            64,
        ),
    ]
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"repeats {repeats}"
    )
    rows = [measure(label, bb, ds, bs, repeats, device) for label, bb, ds, bs in cases]
    header = list(rows[0])
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for row in rows:
        cells = [
            f"{v:,.0f}" if k.endswith("img/s") else f"{v:.3f}" if isinstance(v, float) else str(v)
            for k, v in row.items()
        ]
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
