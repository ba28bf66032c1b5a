"""NMTune on cached augmented views (nmtune) vs the authors' encoder-in-the-loop procedure.

Same frozen backbone, data, seeds, epochs, model, loss and optimiser on both sides:

(a) the authors' procedure: at every step the frozen encoder (eval mode, no grad) embeds two
    fresh random augmentations of the batch (view a, view b), then one NMTune step on
    ``(f_a, f_b)``: AdamW lr 1e-3, wd 1e-4, batch 64, per-step cosine, last epoch kept;
(b) nmtune: ``extract(backbone, train, views=V)`` once (V augmented views into a fresh cache),
    then ``NMTuneClassifier(protocol="authors").fit(V×N×D, y)``, whose steps draw two of the V
    cached views; ``NMTuneClassifier()`` (nmtune's default protocol) is timed beside it;
(c) as (b) with ``clean_view=True``: view 0 is the clean image, views 1..V-1 augmented.

Both use nmtune's own pieces: the augmentation the cache applies (``resolve_augment``, one seed
per (seed, view, row) from ``row_seeds``; epoch e of (a) uses views 2e and 2e+1, so its first
epoch sees exactly the views (b) caches first), the model (``ResidualMLP``, same seeded
initialisation) and the step (``nmtune.tuners.train_step``, which ``fit`` calls too). Test
accuracy is measured on clean (un-augmented) test features. Also timed on the same cached
features: ``LinearProbe`` (CLIP protocol) and NMTune with the epoch chosen on a 20% validation
split (``validation=0.2``) beside the authors' last epoch.

    python benchmarks/bench_nmtune_protocol.py            # resnet8, 3 seeds, V=2,4: ~8 min
    python benchmarks/bench_nmtune_protocol.py --quick    # a smoke run, under a minute
    python benchmarks/bench_nmtune_protocol.py --backbone resnet20 --seeds 0 1 --views 2 8
    python benchmarks/bench_nmtune_protocol.py --backbone efficientnet-lite0 --quick

(times on the 2-core box at load average ~7; the first run also pre-trains the ResNet, 1-3 min)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

# nmtune before torch: importing it sets OpenMP's passive wait policy, which only takes effect
# if set before torch loads OpenMP (on this loaded 2-core box busy-waiting threads made the
# small matrix products of the MLP steps and LinearProbe ~10x slower).
import nmtune

# isort: split
import numpy as np
import torch

from nmtune._torch import resolve_device, tune_cpu_allocator
from nmtune.augment import row_seeds
from nmtune.backbones import create_backbone
from nmtune.data import load_dataset
from nmtune.features import extract, resolve_augment
from nmtune.objective import AUTHOR_WEIGHTS
from nmtune.pretrain import PretrainConfig, pretrain
from nmtune.tuners import LinearProbe, NMTuneClassifier, ResidualMLP, batch_bounds, train_step

#: The authors' tuning settings (docs/design.md §3.1); (a) and (b) share them.
LR, WEIGHT_DECAY, BATCH_SIZE, HIDDEN_RATIO = 1e-3, 1e-4, 64, 4
WEIGHTS = (AUTHOR_WEIGHTS["mse"], AUTHOR_WEIGHTS["cov"], AUTHOR_WEIGHTS["svd"])
#: Per backbone: factory arguments and default (train, test) subset sizes on MNIST.
BACKBONES = {
    "resnet8": ({"width": 16, "in_channels": 1}, (2000, 2000)),
    "resnet20": ({"width": 16, "in_channels": 1}, (2000, 2000)),  # ~2.5x resnet8's encoder cost
    "efficientnet-lite0": ({"image_size": 64}, (500, 1000)),
}


def load_backbone(name: str, work_dir: Path):
    """The frozen backbone. The built-in ResNets are first pre-trained on Fashion-MNIST (kept in
    work_dir), since their random-init features are too poor for an accuracy comparison."""
    kwargs = BACKBONES[name][0]
    if not name.startswith("resnet"):
        return create_backbone(name, **kwargs)
    config = PretrainConfig(backbone=name, backbone_kwargs=kwargs, dataset="fashion-mnist",
                            limit=10_000, eval_limit=2000, epochs=2)
    result = pretrain(config, work_dir / f"pretrain-{name}-fmnist10k-e2", progress=False)
    print(f"backbone: {name} pre-trained on Fashion-MNIST 10k x 2 epochs (eval acc "
          f"{result.metrics['eval_acc']:.3f}, {result.metrics['seconds']:.0f} s when trained; "
          f"kept in {result.out_dir})")
    return create_backbone(name, weights=str(result.backbone_path), **kwargs)


def authors_procedure(backbone, train, seed: int, epochs: int, device) -> tuple[ResidualMLP, float]:
    """(a): the encoder runs inside every step. Returns the trained model and the seconds spent
    augmenting and encoding (the rest of the wall time is the MLP steps)."""
    augment, _ = resolve_augment("default", train.modality, views=2)  # what the cache applies
    classes, y_index = np.unique(train.labels, return_inverse=True)
    labels = torch.as_tensor(y_index, device=device)
    with torch.random.fork_rng(devices=[]):  # the initialisation NMTuneClassifier.fit draws
        torch.manual_seed(seed)
        model = ResidualMLP(backbone.feature_dim, HIDDEN_RATIO, classes.size).to(device)
    bounds = batch_bounds(len(train), BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(bounds))
    order_generator = torch.Generator().manual_seed(seed)
    encode_seconds = 0.0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=order_generator).numpy()
        # Fresh augmentations every epoch: views 2e and 2e+1 of the per-row seed stream.
        view_seeds = [row_seeds(seed, 2 * epoch + v, 0, len(train)) for v in (0, 1)]
        for start, stop in bounds:
            idx = order[start:stop]
            tick = time.perf_counter()
            images = train.inputs[idx]
            both = np.concatenate([augment(images, seeds[idx]) for seeds in view_seeds])
            features = torch.from_numpy(backbone.embed(both)).to(device)  # eval mode, no grad
            encode_seconds += time.perf_counter() - tick
            fa, fb = features[: idx.size], features[idx.size :]
            train_step(model, optimizer, schedule, fa, fb, labels[idx], WEIGHTS)
    return model.eval(), encode_seconds


def model_accuracy(model: ResidualMLP, classes: np.ndarray, features: np.ndarray,
                   labels: np.ndarray) -> float:
    """Test accuracy of (a)'s model on clean features; output j means ``classes[j]``."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(torch.tensor(features, device=device))[1]
    return float((classes[logits.argmax(1).cpu().numpy()] == labels).mean())


def clocked(row: dict, key: str, fn, *args, **kwargs):
    """Run ``fn``; store its wall and process-CPU seconds in ``row[key]`` as ``(wall, cpu)``.

    CPU time is the steadier figure on a shared machine: it does not count waiting for a core.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    row[key] = (time.perf_counter() - wall, time.process_time() - cpu)
    return out


def run_seed(backbone, train, test_features, test_labels, seed, args, device, work_dir) -> dict:
    """Every timing (``(wall, cpu)`` seconds) and test accuracy of one seed."""
    row = {}
    model, encode_s = clocked(row, "a", authors_procedure, backbone, train, seed, args.epochs,
                              device)
    row["a encode share"] = encode_s / row["a"][0]
    row["a acc"] = model_accuracy(model, np.unique(train.labels), test_features, test_labels)
    for v in args.views:
        # A fresh cache directory: the end-to-end time includes writing (and hashing) the cache.
        with tempfile.TemporaryDirectory(dir=work_dir) as cache:
            cached = clocked(row, f"extract V={v}", extract, backbone, train, views=v, seed=seed,
                             device=device, cache_dir=cache, progress=False)
            views = np.array(cached.features)
        # (b) is the authors' protocol, as (a); nmtune's own default protocol beside it.
        estimators = {
            f"nmtune V={v}": NMTuneClassifier(protocol="authors", epochs=args.epochs,
                                              random_state=seed, device=args.device),
            f"nmtune-val V={v}": NMTuneClassifier(protocol="authors", epochs=args.epochs,
                                                  validation=0.2, random_state=seed,
                                                  device=args.device),
            f"nmtune-default V={v}": NMTuneClassifier(epochs=args.epochs, random_state=seed,
                                                      device=args.device),
            f"lp V={v}": LinearProbe(random_state=seed, device=args.device),
        }
        for key, estimator in estimators.items():
            clocked(row, key, estimator.fit, views, train.labels)
            row[f"{key} acc"] = estimator.score(test_features, test_labels)
        row[f"nmtune-val V={v} epoch"] = estimators[f"nmtune-val V={v}"].best_epoch_
        row[f"b V={v}"] = tuple(
            x + y for x, y in zip(row[f"extract V={v}"], row[f"nmtune V={v}"], strict=True)
        )
        # (c): the same, with view 0 the clean image and V-1 augmented views (clean_view).
        with tempfile.TemporaryDirectory(dir=work_dir) as cache:
            cached = clocked(row, f"extract-clean V={v}", extract, backbone, train, views=v,
                             clean_view=True, seed=seed, device=device, cache_dir=cache,
                             progress=False)
            views = np.array(cached.features)
        estimator = NMTuneClassifier(protocol="authors", epochs=args.epochs, random_state=seed,
                                     device=args.device)
        clocked(row, f"nmtune-clean V={v}", estimator.fit, views, train.labels)
        row[f"nmtune-clean V={v} acc"] = estimator.score(test_features, test_labels)
        row[f"c V={v}"] = tuple(x + y for x, y in zip(
            row[f"extract-clean V={v}"], row[f"nmtune-clean V={v}"], strict=True))
    return row


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sample std`` of ``scale * values``."""
    values = [scale * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def print_tables(rows: list[dict], views: list[int]) -> None:
    """The summary over seeds: times, test accuracy, and how much faster than (a) each row is."""

    def line(label: str, key: str, acc_key: str | None = None) -> None:
        wall, cpu = ([r[key][i] for r in rows] for i in (0, 1))
        speedup = [r["a"][0] / r[key][0] for r in rows], [r["a"][1] / r[key][1] for r in rows]
        acc = mean_std([r[acc_key] for r in rows], 100) if acc_key else ""
        print(f"| {label} | {mean_std(wall, digits=1)} | {mean_std(cpu, digits=1)} | {acc} "
              f"| {mean_std(speedup[0], digits=1)}× ({mean_std(speedup[1], digits=1)}×) |")

    share = statistics.mean(r["a encode share"] for r in rows)
    print("\n| method | wall s | CPU s | test acc % | (a) time ÷ this, wall (CPU) |")
    print("|---|---|---|---|---|")
    line(f"(a) authors: encoder in every step ({share:.0%} of it augmenting + encoding)", "a",
         "a acc")
    for v in views:
        line(f"**(b) nmtune V={v}: extract + NMTune fit (end to end)**", f"b V={v}",
             f"nmtune V={v} acc")
        line(f"(b) V={v}: extract alone", f"extract V={v}")
        line(f"(b) V={v}: NMTune fit alone (authors' last epoch)", f"nmtune V={v}")
        epochs = "/".join(str(r[f"nmtune-val V={v} epoch"]) for r in rows)
        line(f"(b) V={v}: NMTune fit, epoch chosen on a 20% validation split (chose {epochs})",
             f"nmtune-val V={v}", f"nmtune-val V={v} acc")
        line(f"(b) V={v}: NMTune fit, nmtune's default protocol", f"nmtune-default V={v}",
             f"nmtune-default V={v} acc")
        line(f"(b) V={v}: LinearProbe fit (CLIP protocol)", f"lp V={v}", f"lp V={v} acc")
        line(f"**(c) nmtune V={v}, view 0 clean (`clean_view=True`): extract + NMTune fit**",
             f"c V={v}", f"nmtune-clean V={v} acc")
    print()
    for v in views:
        gap = [100 * (r[f"nmtune V={v} acc"] - r["a acc"]) for r in rows]
        gap_default = [100 * (r[f"nmtune-default V={v} acc"] - r["a acc"]) for r in rows]
        print(f"V={v}: accuracy (b, default protocol) - (a) = {mean_std(gap_default)} points")
        gap_clean = [100 * (r[f"nmtune-clean V={v} acc"] - r["a acc"]) for r in rows]
        print(f"V={v}: accuracy (c, view 0 clean) - (a) = {mean_std(gap_clean)} points (per "
              f"seed {', '.join(f'{g:+.2f}' for g in gap_clean)})")
        lp = [r[f"nmtune V={v}"][0] / r[f"lp V={v}"][0] for r in rows]
        print(f"V={v}: accuracy (b) - (a) = {mean_std(gap)} points (per seed "
              f"{', '.join(f'{g:+.2f}' for g in gap)}); NMTune fit / LinearProbe fit = "
              f"{mean_std(lp)} (wall)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet8")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 500/500 rows, 3 epochs, V=2")
    parser.add_argument("--n-train", type=int, help="MNIST train subset (default per backbone)")
    parser.add_argument("--n-test", type=int, help="MNIST test subset (default per backbone)")
    parser.add_argument("--epochs", type=int, default=30, help="the authors' 30 by default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4],
                        help="cached views V for (b); one (b) run per value")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nmtune-bench"),
                        help="pre-trained backbone and test-feature cache live here")
    args = parser.parse_args()
    n_train, n_test = BACKBONES[args.backbone][1]
    if args.quick:
        n_train, n_test, args.epochs, args.views = 500, 500, 3, [2]
    args.n_train = args.n_train or n_train
    args.n_test = args.n_test or n_test
    if len(args.seeds) < 2 or min(args.views) < 2:
        parser.error("need at least 2 seeds (for a spread) and V >= 2 views")
    return args


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"nmtune {nmtune.__version__}, torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}; load average at start {os.getloadavg()[0]:.2f}")
    backbone = load_backbone(args.backbone, args.work_dir).to(device)
    train = load_dataset("mnist", "train", args.n_train)
    test = load_dataset("mnist", "test", args.n_test)
    clean_test = extract(backbone, test, device=device, cache_dir=args.work_dir / "features",
                         progress=False)
    print(f"{args.backbone} ({backbone.feature_dim}-d) on MNIST: {len(train)} train / "
          f"{len(test)} clean test rows, {args.epochs} epochs, batch {BATCH_SIZE}, seeds "
          f"{args.seeds}, cached views {args.views}")
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(backbone, train, clean_test.features, test.labels, seed, args, device,
                             args.work_dir))
        row = rows[-1]
        print(f"seed {seed}: (a) {row['a'][0]:.1f} s, acc {row['a acc']:.4f}; " + "; ".join(
            f"(b) V={v} {row[f'b V={v}'][0]:.1f} s, acc {row[f'nmtune V={v} acc']:.4f}"
            for v in args.views))
    print_tables(rows, args.views)
    print("load average at end (1/5/15 min): "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
