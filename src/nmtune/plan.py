"""What a study will cost before it runs: ``nmtune study CONFIG --plan``.

The cells and their dependencies come from :func:`nmtune.study.study_cells`, the same graph the
executors run. Each stage's cost is estimated from a model of its work and a short
calibration on this machine; nothing is trained, extracted or written:

- **FLOPs.** The backbone's forward FLOPs per example are counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on one dummy input of the shape the study
  feeds it; a training step costs 3× a forward pass (forward, and a backward of twice the
  work). Pre-training = ``epochs × (3·train + eval)`` forwards plus a final pass over the
  training set; extraction = ``views × rows`` forwards; a spectrum = ``2·n·d²`` (the Gram
  matrix); tuning FLOPs are those torch counts while fitting the calibration problem, scaled
  by rows and classes (scipy's L-BFGS of ``lp`` is not counted).
- **CPU time.** Each stage is timed on this CPU at a small size (a few training steps, a few
  forward batches, a spectrum and a fit of every method on ``CAL_ROWS`` synthetic rows of at
  most ``CAL_CLASSES`` classes) and
  scaled linearly by its rows.
- **GPU time.** FLOPs ÷ (the named GPU's dense bf16 peak × :data:`GPU_EFFICIENCY`), never
  less than nothing: an assumption, stated in the output, not a measurement.
- **Memory.** Pre-training: weights, gradients and optimiser state (4 copies of the
  parameters) plus a batch of activations (the module outputs of one forward, ×2 for their
  gradients); extraction, spectrum and tuning: their feature arrays.

Datasets are sized from their cards; a ``folder:`` tree that is not on this machine is sized
from :data:`KNOWN_FOLDER_SIZES` when its name is a well-known set (ImageNet), else its cells
are listed with an unknown cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import NMTuneError

#: Dense bf16 tensor-core peak FLOP/s (vendor data sheets, without sparsity).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                  "A10": 125e12, "V100": 125e12, "L4": 121e12, "T4": 65e12}
#: Fraction of the peak a convnet step reaches (ResNet-50 at ~2,700 images/s on an A100
#: with mixed precision is ~21% of its peak: NVIDIA's published training throughput).
GPU_EFFICIENCY = 0.2
#: Rows of the synthetic tuning and spectrum problems timed on this CPU, at most; fewer for a
#: wide head, so that each calibration fit takes about a second.
CAL_ROWS = 512
#: Classes of the synthetic tuning problem, at most.
CAL_CLASSES = 50
#: Forward FLOPs of one calibration batch of the backbone.
CAL_FLOPS = 4e9
#: Sizes of well-known folder trees, for planning on a machine that does not hold them.
KNOWN_FOLDER_SIZES = {"imagenet": {"train": 1_281_167, "val": 50_000}}


@dataclass
class StageCost:
    """The estimated cost of every cell of one stage, summed (``unknown``: cells whose data
    size is not known here, left out of the sums)."""

    stage: str
    cells: int = 0
    unknown: int = 0
    flops: float = 0.0
    peak_memory: float = 0.0
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0


@dataclass
class Plan:
    """A study's cells (each with the indices of the cells it needs) and its stage costs."""

    name: str
    gpu: str
    cells: list[tuple[str, list[int]]]
    stages: dict[str, StageCost] = field(default_factory=dict)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_seconds for s in self.stages.values()) / 3600


def _rows(dataset: str, split: str, limit: int | None) -> int | None:
    """Rows of a set, without reading it; None when not knowable here."""
    from .data import dataset_card

    prefix, _, path = dataset.partition(":")
    if prefix == "folder" and not Path(path).exists():
        n = KNOWN_FOLDER_SIZES.get(Path(path).name, {}).get(split)
    else:
        n = dataset_card(dataset).splits.get(split)
    return n if limit is None or n is None else min(n, limit)


def _input_shape(backbone, dataset: str) -> tuple[int, ...]:
    """(C, H, W) of one preprocessed image of ``dataset`` (the backbone's size if it resizes)."""
    from .data import dataset_card

    pre = backbone.preprocess
    size = getattr(pre, "image_size", None)
    if size is None:
        _, h, w = dataset_card(dataset).input_shape
    else:
        h = w = size
    return (getattr(pre, "in_channels", 3), h, w)


@dataclass
class _Calibration:
    """Per-example costs of one backbone at one input shape, measured here."""

    forward_flops: float
    forward_seconds: float
    train_seconds: float
    param_bytes: float
    activation_bytes: float


def _calibrate_backbone(module, shape: tuple[int, ...]) -> _Calibration:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, *shape)
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o.numel()))
             for m in module.modules() if not list(m.children())]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(x[:1])
    for h in hooks:
        h.remove()
    flops = counter.get_total_flops()
    activation = 4.0 * sum(outputs)
    # A batch of about CAL_FLOPS of work: a second or two whatever the model.
    batch = int(np.clip(CAL_FLOPS / max(flops, 1), 1, 64))
    x = torch.randn(batch, *shape)
    timed = []
    for train in (False, True):
        module.train(train)
        with torch.set_grad_enabled(train):
            t0 = time.perf_counter()
            for _ in range(2):
                out = module(x)
                if train:
                    out.float().sum().backward()
            timed.append((time.perf_counter() - t0) / (2 * batch))
    params = sum(p.numel() for p in module.parameters()) * 4.0
    return _Calibration(flops, timed[0], timed[1], params, activation)


def _synthetic(n: int, d: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = rng.normal(size=(k, d)).astype(np.float32)
    return (centers[y] + rng.normal(size=(n, d)).astype(np.float32)), y


def _fit_cost(tuner, X, y) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        t0 = time.perf_counter()
        tuner.fit(X, y)
        seconds = time.perf_counter() - t0
    return seconds, counter.get_total_flops()


def _calibrate_tune(params: dict, d: int, k: int, device: str) -> tuple[float, float]:
    """(seconds, torch FLOPs) per training row of fitting a method, from ``CAL_ROWS`` rows.

    A head's work per row grows with its classes: at most ``CAL_CLASSES`` are fitted and the
    cost scaled by ``k / CAL_CLASSES`` (an upper bound: a hidden layer does not grow). An
    epoch-based method is fitted for 1 and 2 epochs: its set-up once, plus its epochs times
    the difference.
    """
    from .study import make_tuner

    k_cal = min(k, CAL_CLASSES)
    X, y = _synthetic(CAL_ROWS, d, k_cal)
    tuner = make_tuner(params, seed=0, device=device)
    epochs = tuner.get_params().get("epochs")
    if epochs is None:
        seconds, flops = _fit_cost(tuner, X, y)
    else:
        one = np.array(_fit_cost(tuner.set_params(epochs=1), X, y))
        per_epoch = np.maximum(np.array(_fit_cost(tuner.set_params(epochs=2), X, y)) - one, 0)
        seconds, flops = one + (epochs - 1) * per_epoch
    scale = k / k_cal / CAL_ROWS
    return seconds * scale, flops * scale


def _calibrate_spectrum(d: int) -> float:
    """Seconds per row of a spectrum of ``d``-wide features."""
    from .spectrum import summary

    X, _ = _synthetic(max(CAL_ROWS, 2 * d), d, 2)
    t0 = time.perf_counter()
    summary(X)
    return (time.perf_counter() - t0) / len(X)


def plan_study(config, gpu: str = "H100") -> Plan:
    """The plan of ``config``: its cells and each stage's estimated cost (module docstring)."""
    from .backbones import create_backbone
    from .pretrain import ClipConfig
    from .study import ZEROSHOT, study_cells

    if gpu not in GPU_PEAK_FLOPS:
        raise NMTuneError(f"unknown GPU {gpu!r}; known: {', '.join(GPU_PEAK_FLOPS)}")
    graph = study_cells(config)
    index = {cell: i for i, cell in enumerate(graph)}
    plan = Plan(config.name, gpu, [(c.name, [index[d] for d in deps])
                                   for c, deps in graph.items()])
    plan.stages = {s: StageCost(s) for s in ("pretrain", "extract", "spectrum", "tune")}
    backbone = create_backbone(config.backbone["name"], **(config.backbone.get("kwargs") or {}))
    d = backbone.feature_dim
    rate = GPU_PEAK_FLOPS[gpu] * GPU_EFFICIENCY
    cal: dict = {}

    def of_images(dataset: str) -> _Calibration | None:
        if backbone.modality != "image":
            return None
        shape = _input_shape(backbone, dataset)
        if shape not in cal:
            cal[shape] = _calibrate_backbone(backbone.module, shape)
        return cal[shape]

    def add(stage: str, rows: int | None, flops, seconds, memory) -> None:
        cost = plan.stages[stage]
        cost.cells += 1
        if rows is None:
            cost.unknown += 1
            return
        cost.flops += flops
        cost.cpu_seconds += seconds
        cost.gpu_seconds += flops / rate
        cost.peak_memory = max(cost.peak_memory, memory)

    # An API backbone learns its width from its first reply, and a plan sends no request.
    spectrum_rate = _calibrate_spectrum(d) if d is not None else None
    tune_rates = {}
    for cell in graph:
        if cell.stage == "pretrain":
            p = config.pretrain
            if p is None:
                add("pretrain", 0, 0.0, 0.0, 0.0)
                continue
            if isinstance(p, ClipConfig):  # no cost model of the text tower yet: counted unknown
                add("pretrain", None, 0, 0, 0)
                continue
            n = _rows(p.dataset, p.split, p.limit)
            n_eval = _rows(p.eval_dataset or p.dataset, p.eval_split, p.eval_limit)
            c = of_images(p.dataset)
            if n is None or n_eval is None or c is None:
                add("pretrain", None, 0, 0, 0)
                continue
            forwards = p.epochs * (3 * n + n_eval) + n
            seconds = p.epochs * (n * c.train_seconds + n_eval * c.forward_seconds) + (
                n * c.forward_seconds)
            per_gpu_batch = p.batch_size / max(1, config.resources.pretrain.gpus)
            add("pretrain", n, forwards * c.forward_flops, seconds,
                4 * c.param_bytes + 2 * per_gpu_batch * c.activation_bytes)
        elif cell.stage == "extract":
            s = cell.spec
            n = _rows(s.dataset, s.split, s.limit)
            c = of_images(s.dataset)
            if n is None or c is None:
                add("extract", None, 0, 0, 0)
                continue
            rows = n * cell.views
            add("extract", n, rows * c.forward_flops, rows * c.forward_seconds,
                rows * d * 4.0 + config.features.batch_size * c.activation_bytes)
        elif d is None:
            add(cell.stage, None, 0, 0, 0)
        elif cell.stage == "spectrum":
            n = _rows(cell.spec.dataset, cell.spec.split, cell.spec.limit)
            add("spectrum", n, 2.0 * (n or 0) * d * d, (n or 0) * spectrum_rate,
                (n or 0) * d * 8.0 + d * d * 8.0)
        elif cell.method == ZEROSHOT:  # embeds a few prompts, scores cached features
            add("tune", 0, 0.0, 0.0, 0.0)
        else:
            train = cell.task.train
            n = _rows(train.dataset, train.split, train.limit)
            params = config.methods[cell.method]
            if cell.method not in tune_rates:
                k = _classes(train.dataset)
                tune_rates[cell.method] = _calibrate_tune(params, d, k, config.device)
            per_row_s, per_row_flops = tune_rates[cell.method]
            views = int(params.get("views", 1))
            add("tune", n, (n or 0) * per_row_flops, (n or 0) * per_row_s,
                (n or 0) * views * d * 4.0)
    return plan


def _classes(dataset: str) -> int:
    """Classes of a set; a missing folder tree counts as 1,000 (ImageNet's)."""
    from .data import dataset_card

    prefix, _, path = dataset.partition(":")
    if prefix == "folder" and not Path(path).exists():
        return 1000
    return dataset_card(dataset).num_classes


def _human(value: float, unit: str) -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                          (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def format_plan(plan: Plan, max_cells: int = 40) -> str:
    """The plan as text: the cells with their dependencies, then the cost per stage."""
    lines = [f"study {plan.name}: {len(plan.cells)} cells (#: cell <- the cells it needs)"]
    shown = plan.cells if len(plan.cells) <= max_cells else plan.cells[:max_cells]
    for i, (name, deps) in enumerate(shown):
        lines.append(f"  {i:>4}: {name}" + (f"  <- {', '.join(map(str, deps))}" if deps else ""))
    if len(shown) < len(plan.cells):
        lines.append(f"  ... and {len(plan.cells) - len(shown)} more of the same pattern")
    lines.append("")
    lines.append(f"{'stage':<9} {'cells':>6} {'FLOPs':>12} {'peak memory':>12} "
                 f"{'this CPU':>10} {plan.gpu + ' GPU':>10}")
    for s in plan.stages.values():
        note = f"  ({s.unknown} of unknown size, not counted)" if s.unknown else ""
        lines.append(f"{s.stage:<9} {s.cells:>6} {_human(s.flops, 'FLOP'):>12} "
                     f"{_human(s.peak_memory, 'B'):>12} {_duration(s.cpu_seconds):>10} "
                     f"{_duration(s.gpu_seconds):>10}{note}")
    total_cpu = sum(s.cpu_seconds for s in plan.stages.values())
    lines.append(f"{'total':<9} {len(plan.cells):>6} "
                 f"{_human(sum(s.flops for s in plan.stages.values()), 'FLOP'):>12} "
                 f"{'':>12} {_duration(total_cpu):>10} {_duration(plan.gpu_hours * 3600):>10}")
    lines.append("")
    lines.append(f"GPU-hours on {plan.gpu}: {plan.gpu_hours:.1f} (at "
                 f"{GPU_EFFICIENCY:.0%} of its {GPU_PEAK_FLOPS[plan.gpu] / 1e12:.0f} TFLOP/s "
                 "bf16 peak: an assumption, not a measurement). CPU time: calibrated on this "
                 "machine, one cell after another.")
    return "\n".join(lines)
