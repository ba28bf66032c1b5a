"""What a pre-training run computes (:class:`PretrainConfig`, :class:`ClipConfig` for the
contrastive objective) and where its files are (:class:`PretrainResult`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._validation import NMTuneError, check_int, check_keys, check_rate, check_seed, check_str
from ..noise import NoiseSpec

_OPTIMIZERS = ("sgd", "adamw")
#: Settings that say where a run executes, not what it computes: they may change on resume.
PLACEMENT_KEYS = ("device", "num_workers")


class _Settings:
    """``from_dict`` and ``to_dict`` of a frozen settings dataclass (YAML, ``config.json``)."""

    #: What the settings are, for error messages.
    _WHAT = "settings"

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a mapping; unknown keys are an error."""
        if not isinstance(d, dict):
            raise NMTuneError(f"{cls._WHAT} must be a mapping, got {d!r}")
        check_keys(d, [f.name for f in dataclasses.fields(cls)], cls._WHAT)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``type(c).from_dict(c.to_dict()) == c``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in out.items():
            if isinstance(value, dict):
                out[name] = dict(value)
            elif hasattr(value, "to_dict"):  # a NoiseSpec
                out[name] = value.to_dict()
        return out


@dataclass(frozen=True)
class PretrainConfig(_Settings):
    """Everything that determines a pre-training run. Defaults are the CPU-sized pilot setting.

    Parameters
    ----------
    backbone : str
        Registered backbone name (``"resnet8"``, ``"resnet20"``, ``"cnn4"``, ...).
    backbone_kwargs : dict
        Passed to ``create_backbone`` (e.g. ``{"width": 16, "in_channels": 1}``).
    dataset, split : str
        Training data, as ``load_dataset(dataset, split, limit, subset_seed)``.
    limit : int or None
        Size of a seeded, class-stratified subset; ``None`` uses the whole split.
    subset_seed : int
        Seed of that subset (kept apart from ``seed`` so that seeds vary training, not data).
    noise : NoiseSpec
        Label noise applied once to the training labels. A mapping is converted.
    eval_dataset : str or None
        Clean evaluation data; ``None`` means ``dataset``.
    eval_split : str
    eval_limit : int or None
    epochs : int
    batch_size : int
        Global batch: under DDP each of N ranks takes ``batch_size / N`` rows.
    optimizer : {"sgd", "adamw"}
        SGD with Nesterov-free momentum, or AdamW; both with per-step cosine decay to 0.
    lr : float
        Peak learning rate (AdamW wants about 1e-3).
    momentum : float
        SGD momentum (ignored by AdamW).
    weight_decay : float
    seed : int
        Model initialisation, data order and augmentation.
    augment : bool
        Random-resized crop (area 8-100%, aspect 3/4-4/3) and horizontal flip of every training
        batch, the standard ImageNet augmentation; drawn from the seeded data-order generator.
    num_workers : int
        ``DataLoader`` worker processes per rank that decode a lazy image folder; 0 decodes in
        the training process. Ignored for in-memory data; results do not depend on it.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``. Under DDP on CUDA each rank uses
        ``cuda:LOCAL_RANK``.
    """

    backbone: str = "resnet8"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    split: str = "train"
    limit: int | None = None
    subset_seed: int = 0
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    eval_dataset: str | None = None
    eval_split: str = "test"
    eval_limit: int | None = None
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    augment: bool = False
    num_workers: int = 0
    device: str = "auto"

    _WHAT = "pre-training settings"

    def __post_init__(self) -> None:
        if isinstance(self.noise, dict):
            object.__setattr__(self, "noise", NoiseSpec.from_dict(self.noise))
        if not isinstance(self.noise, NoiseSpec):
            raise NMTuneError(f"noise must be a NoiseSpec or a mapping, got {self.noise!r}")
        if not isinstance(self.backbone_kwargs, dict):
            raise NMTuneError(f"backbone_kwargs must be a mapping, got {self.backbone_kwargs!r}")
        for name in ("backbone", "dataset", "split", "eval_split", "device"):
            check_str(getattr(self, name), name)
        if self.eval_dataset is not None:
            check_str(self.eval_dataset, "eval_dataset")
        for name in ("lr", "momentum", "weight_decay"):
            check_number(name, getattr(self, name))
        for name in ("epochs", "batch_size"):
            check_int(getattr(self, name), name, 1)
        for name in ("limit", "eval_limit"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1)
        for name in ("seed", "subset_seed"):
            check_seed(getattr(self, name), name)
        check_int(self.num_workers, "num_workers", 0)
        if not isinstance(self.augment, bool):
            raise NMTuneError(f"augment must be true or false, got {self.augment!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise NMTuneError(f"unknown optimizer {self.optimizer!r}; choose from {_OPTIMIZERS}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NMTuneError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise NMTuneError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise NMTuneError(f"weight_decay must be >= 0, got {self.weight_decay}")



@dataclass(frozen=True)
class ClipConfig(_Settings):
    """Everything that determines a contrastive pre-training run (CPU-sized defaults).

    Parameters
    ----------
    backbone, backbone_kwargs
        The image tower: a registered backbone and its factory arguments.
    dataset, split, limit
        Offline pairs :func:`nmtune.data.pairs.synthetic_pairs` of this registered image set
        (generated captions), used when ``pairs`` is ``None``; ``limit`` also caps ``pairs``.
    pairs : str or None
        An open_clip CSV/TSV table or a WebDataset shard pattern (``.tar``); its images must
        share one size. Read whole into memory.
    caption_swap : float in [0, 1]
        Caption-swap noise rate: exactly ``round(rate·N)`` captions move to other pairs
        (:func:`nmtune.noise.caption_swap`), once per run.
    noise_seed : int
    text_width, text_layers, text_heads, context_length : int
        The text tower (:class:`~nmtune.contrastive.TextTransformer`).
    embed_dim : int
        Width of the shared embedding.
    epochs, batch_size : int
        ``batch_size`` is global: under DDP each of W ranks takes ``batch_size / W`` pairs and
        the loss sees every rank's negatives.
    lr, weight_decay : float
        AdamW; no decay on gains, biases and the temperature (CLIP's groups).
    warmup_steps : int
        Linear warm-up before the cosine decay.
    seed : int
        Tower initialisation and data order.
    device : str
    objective : {"clip"}
        Fixed: it makes ``config.json`` say which kind of run the folder holds.
    """

    backbone: str = "resnet8"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"
    split: str = "train"
    limit: int | None = None
    pairs: str | None = None
    caption_swap: float = 0.0
    noise_seed: int = 0
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 64
    embed_dim: int = 64
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 0
    seed: int = 0
    device: str = "auto"
    objective: str = "clip"

    _WHAT = "contrastive pre-training settings"

    def __post_init__(self) -> None:
        if self.objective != "clip":
            raise NMTuneError(f"ClipConfig is the 'clip' objective, got {self.objective!r}")
        if not isinstance(self.backbone_kwargs, dict):
            raise NMTuneError(f"backbone_kwargs must be a mapping, got {self.backbone_kwargs!r}")
        for name in ("backbone", "dataset", "split", "device"):
            check_str(getattr(self, name), name)
        if self.pairs is not None:
            check_str(self.pairs, "pairs")
        object.__setattr__(self, "caption_swap", check_rate(self.caption_swap, "caption_swap"))
        for name in ("lr", "weight_decay"):
            check_number(name, getattr(self, name))
        for name in ("text_width", "text_layers", "text_heads", "context_length", "embed_dim",
                     "epochs", "batch_size"):
            check_int(getattr(self, name), name, 1)
        if self.limit is not None:
            check_int(self.limit, "limit", 1)
        for name in ("noise_seed", "seed"):
            check_seed(getattr(self, name), name)
        check_int(self.warmup_steps, "warmup_steps", 0)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NMTuneError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise NMTuneError(f"weight_decay must be >= 0, got {self.weight_decay}")




def check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NMTuneError(f"{name} must be a number, got {value!r}")


def _run_file(name: str) -> property:
    return property(lambda self: self.out_dir / name, doc=f"``out_dir / {name!r}``")


@dataclass(frozen=True)
class PretrainResult:
    """Where a finished run's files are, and its final metrics (the content of ``metrics.json``)."""

    out_dir: Path
    metrics: dict[str, Any]

    backbone_path = _run_file("backbone.pt")
    metrics_path = _run_file("metrics.json")
    history_path = _run_file("history.csv")
    plot_path = _run_file("history.png")
    noise_path = _run_file("noise.npz")
    config_path = _run_file("config.json")
    checkpoint_path = _run_file("checkpoint.pt")
    #: Contrastive runs only: the whole CLIP model (both towers), for zero-shot evaluation.
    model_path = _run_file("model.pt")

