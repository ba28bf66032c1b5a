"""The GPU check: nmtune's heavy paths on one CUDA GPU, each against a plain-torch peer.

1. NMTuneClassifier (authors' settings: AdamW lr 1e-3, wd 1e-4, batch 64, hidden ×4, loss
   weights 1.0/0.04/0.001, bf16 autocast) on synthetic cached features, against a plain
   torch loop of the same model and loss on the same device (data resident there, no
   estimator machinery): seconds and the ratio.
2. LinearProbe on the same features (CLIP protocol: C swept on a validation split).
3. EfficientNet-Lite0 feature extraction (``nmtune.features.extract``: preprocessing, host to
   device, bf16, no cache) against a bare forward pass of the same module on batches already
   on the device: images per second and the ratio.
4. A 1-GPU ``torchrun`` pre-training smoke (NCCL on CUDA, gloo on CPU): exit status and
   the run's metrics.

``--scale full`` is the paper's size (1.28M × 2048 features, 1000 classes, 30 epochs);
``--scale tiny`` runs the same code in seconds, which is how it is checked without a GPU:

    python benchmarks/gpu_check.py --device cpu --scale tiny
    python benchmarks/gpu_check.py --device cuda --scale full     # scripts/gpu_check.sh
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SCALES = {
    # rows, feature dim, classes, epochs, images, image side
    "full": dict(rows=1_281_167, dim=2048, classes=1000, epochs=30, images=4096, side=224),
    "tiny": dict(rows=4096, dim=64, classes=10, epochs=2, images=64, side=64),
}


def _features(rows: int, dim: int, classes: int, device):
    """Separable synthetic features (class centre + noise), generated on ``device``."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    y = torch.randint(0, classes, (rows,), device=device, generator=gen)
    centres = torch.randn(classes, dim, device=device, generator=gen)
    X = centres[y].add_(torch.randn(rows, dim, device=device, generator=gen))
    return X, y


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def plain_nmtune_loop(X, y, classes: int, epochs: int, batch: int = 64) -> None:
    """The peer: NMTune's model and loss in a bare loop (the authors' settings)."""
    import torch
    import torch.nn.functional as F

    from nmtune._torch import autocast
    from nmtune.objective import consistency_mse, covariance_penalty, top_singular_ratio
    from nmtune.tuners import ResidualMLP

    torch.manual_seed(0)
    model = ResidualMLP(X.shape[1], 4, classes).to(X.device).train()
    steps = math.ceil(len(X) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    for _ in range(epochs):
        order = torch.randperm(len(X), device=X.device)
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            if len(idx) < 2:
                continue  # BatchNorm needs two rows
            f = X[idx]
            with autocast(X.device):
                z, logits = model(f)
                z = z.float()
                loss = (F.cross_entropy(logits.float(), y[idx]) + consistency_mse(z, f)
                        + 0.04 * covariance_penalty(z) - 0.001 * top_singular_ratio(z, 5))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def check_tuners(scale: dict, device) -> None:
    from nmtune.tuners import LinearProbe, NMTuneClassifier

    X, y = _features(scale["rows"], scale["dim"], scale["classes"], device)
    print(f"[1] NMTune, {scale['epochs']} epochs, {len(X):,} x {X.shape[1]} features, "
          f"{scale['classes']} classes, on {device}")
    # The authors' protocol: the default one would add a LinearProbe fit for its head and,
    # at the tiny scale, raise 128 steps to min_steps=300; the peer does neither.
    est = NMTuneClassifier(protocol="authors", epochs=scale["epochs"], device=str(device),
                           random_state=0)
    # Warm both paths up first (kernels, allocator, LAPACK): the first of two runs pays it.
    NMTuneClassifier(protocol="authors", epochs=1, device=str(device)).fit(X[:256], y[:256])
    plain_nmtune_loop(X[:256], y[:256], scale["classes"], 1)
    t_est = _timed(lambda: est.fit(X, y), device)
    t_peer = _timed(lambda: plain_nmtune_loop(X, y, scale["classes"], scale["epochs"]), device)
    rows = len(X) * scale["epochs"]
    print(f"    NMTuneClassifier.fit  {t_est:9.1f} s  {rows / t_est:12,.0f} rows/s")
    print(f"    plain torch loop      {t_peer:9.1f} s  {rows / t_peer:12,.0f} rows/s")
    print(f"    estimator / plain: {t_est / t_peer:.2f}x the time")
    print(f"[2] LinearProbe on the same {len(X):,} x {X.shape[1]} features")
    lp = LinearProbe(**({"device": str(device)} if "device" in LinearProbe().get_params()
                        else {}))
    t_lp = _timed(lambda: lp.fit(X.cpu().numpy(), y.cpu().numpy()), device)
    print(f"    LinearProbe.fit       {t_lp:9.1f} s  (train accuracy "
          f"{lp.score(X.cpu().numpy(), y.cpu().numpy()):.3f})")


def check_extraction(scale: dict, device) -> None:
    import torch

    from nmtune._torch import autocast
    from nmtune.backbones import create_backbone
    from nmtune.data.base import _dataset
    from nmtune.features import extract

    n, side, batch = scale["images"], scale["side"], 256
    backbone = create_backbone("efficientnet-lite0", image_size=side)
    rng = np.random.default_rng(0)
    images = rng.random((n, 3, side, side), dtype=np.float32)
    data = _dataset("synthetic", "train", images, np.zeros(n, dtype=np.int64), ("x",))
    print(f"[3] EfficientNet-Lite0 extraction, {n:,} images of {side}x{side}, batch {batch}")
    module = backbone.module.to(device).eval()
    x = backbone.preprocess(images[:batch]).to(device)

    def bare():
        with torch.inference_mode(), autocast(device):
            for _ in range(math.ceil(n / batch)):
                module(x)

    bare()  # warm-up for both: cuDNN autotuning and allocation, so both are steady-state
    t_ex = _timed(lambda: extract(backbone, data, batch_size=batch, device=str(device),
                                  cache_dir=False, progress=False), device)
    t_bare = _timed(bare, device)
    print(f"    extract()             {n / t_ex:12,.0f} images/s")
    print(f"    bare forward          {n / t_bare:12,.0f} images/s")
    print(f"    extract / bare: {t_ex / t_bare:.2f}x the time")


def check_torchrun(device) -> None:
    backend = "NCCL" if device.type == "cuda" else "gloo"
    print(f"[4] torchrun pre-training smoke, 1 process ({backend}), resnet8 on digits, 1 epoch")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=1", "-m", "nmtune.pretrain", "--backbone", "resnet8",
               "--dataset", "digits", "--eval-split", "test", "--epochs", "1",
               "--batch-size", "64", "--device", str(device), "--out", f"{tmp}/run",
               "--quiet", "--json"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        seconds = time.perf_counter() - t0
    if done.returncode != 0:
        print(f"    FAILED (exit {done.returncode}) after {seconds:.1f} s:\n{done.stderr[-2000:]}")
        raise SystemExit(1)
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"    ok in {seconds:.1f} s: eval accuracy {metrics['eval_acc']:.3f}, "
          f"{metrics['epochs']} epoch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--scale", choices=tuple(SCALES), default="full")
    args = parser.parse_args()

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here; use --device cpu --scale tiny")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name}, scale {args.scale}, torch {torch.__version__}")
    start = time.perf_counter()
    scale = SCALES[args.scale]
    for part in (lambda: check_tuners(scale, device), lambda: check_extraction(scale, device),
                 lambda: check_torchrun(device)):
        part()
        print(f"    ({time.perf_counter() - start:.0f} s so far)")


if __name__ == "__main__":
    main()
