"""The typed study config: what a study runs, every part already checked.

:func:`nmtune.study.parse.config_from_dict` builds a :class:`StudyConfig` from YAML; the cells
(:mod:`nmtune.study.cells`) read nothing else. :func:`pretrain_config` and :func:`run_name` give
a grid point's pre-training settings and run folder, the same for ``nmtune study`` and
``nmtune pretrain --config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .._validation import NMTuneError
from ..noise import NoiseSpec
from ..pretrain import ClipConfig, PretrainConfig

#: The kind of a ``noise:`` section that names none. Run folders, the ``noise_type`` column and
#: the labels pre-training corrupts all read it from :class:`NoiseGrid`, so they always agree.
DEFAULT_NOISE_KIND = "symmetric"
#: The noise kind of contrastive pre-training: captions swapped between pairs.
CAPTION_SWAP = "caption_swap"
#: The ``method`` column of zero-shot rows; no tuning method may take the name.
ZEROSHOT = "zeroshot"


@dataclass(frozen=True)
class SetSpec:
    """One dataset split, optionally a seeded subset: what features are extracted from."""

    dataset: str
    split: str = "train"
    limit: int | None = None
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.split}" + (f"[{self.limit}]" if self.limit else "")


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: fit once on ``train``; evaluate in-domain on ``test`` and
    out-of-domain on each set of ``ood`` (name -> set), the paper's train-on-one-domain,
    test-on-a-shifted-one protocol."""

    name: str
    train: SetSpec
    test: SetSpec
    ood: tuple[tuple[str, SetSpec], ...] = ()

    def evaluations(self) -> list[tuple[str, str, SetSpec]]:
        """``(row task name, kind, test set)`` for the ID test and every OOD test."""
        return [(self.name, "id", self.test)] + [
            (f"{self.name}->{name}", "ood", spec) for name, spec in self.ood
        ]


@dataclass(frozen=True)
class NoiseGrid:
    """The pre-training label noise of a study: one kind at each of ``ratios``.

    Parameters
    ----------
    kind : str, default :data:`DEFAULT_NOISE_KIND`
        A :class:`~nmtune.noise.NoiseSpec` kind. "transition" sets its own amount of noise,
        so its ratios are 0 (clean) and 1 (the matrix applied).
    ratios : tuple of float
        Ratio 0 is the clean baseline of every kind.
    matrix, mapping, cifar_n
        The :class:`~nmtune.noise.NoiseSpec` settings of the kind.
    """

    kind: str = DEFAULT_NOISE_KIND
    ratios: tuple[float, ...] = (0.0,)
    matrix: tuple[tuple[float, ...], ...] | None = None
    mapping: tuple[int, ...] | None = None
    cifar_n: str | None = None

    def spec(self, ratio: float, seed: int) -> NoiseSpec:
        """The noise grid point ``(ratio, seed)`` applies: none at ratio 0, whatever the kind."""
        if ratio == 0:
            return NoiseSpec("none", 0.0, seed=seed)
        return NoiseSpec(self.kind, ratio, seed, self.matrix, self.mapping, self.cifar_n)


#: A study without a ``noise:`` section: every grid point is clean.
NO_NOISE = NoiseGrid(kind="none")


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot classification of every task by a CLIP study's text tower.

    ``templates`` are prompts with one ``{}`` for the class name (None: the defaults of
    :mod:`nmtune.zeroshot`); a class is named as the generated captions name it
    (:func:`nmtune.data.pairs.noun_phrase`).
    """

    templates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FeaturesConfig:
    """How features are extracted: ``batch_size`` rows per forward pass (memory, not results)."""

    batch_size: int = 256


@dataclass(frozen=True)
class StageResources:
    """What one cell of a stage asks the Ray scheduler for: ``cpus`` CPUs and ``gpus`` GPUs
    (a fraction shares a GPU). Pre-training with ``gpus`` > 1 is one DDP job over that many
    GPUs of one node."""

    cpus: float = 1
    gpus: float = 0


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-stage resource requests of a study's cells (``resources:`` in the config); used by
    ``--executor ray``, and for multi-GPU pre-training by either executor."""

    pretrain: StageResources = StageResources()
    extract: StageResources = StageResources()
    spectrum: StageResources = StageResources()
    tune: StageResources = StageResources()


@dataclass(frozen=True)
class StudyConfig:
    """A whole study, every part checked; see ``configs/default.yaml`` for a commented example.

    ``backbone`` is ``{"name": ..., "kwargs": {...}}``; ``methods`` maps each method's name to
    its settings (``method``, the estimator's parameters, ``views``, ``select``); ``pretrain``
    holds the pre-training settings every grid point shares (its backbone, noise and seed are
    filled in per point by :func:`pretrain_config`), or None for a ready-made backbone.
    """

    name: str
    seeds: tuple[int, ...]
    backbone: dict
    tasks: tuple[TaskSpec, ...]
    methods: dict
    pretrain: PretrainConfig | ClipConfig | None = None
    noise: NoiseGrid = NO_NOISE
    zeroshot: ZeroShotConfig | None = None
    features: FeaturesConfig = FeaturesConfig()
    spectrum_of: tuple[SetSpec, ...] = ()
    device: str = "auto"
    threads: int = 1
    resources: ResourcesConfig = ResourcesConfig()
    raw: dict = field(default_factory=dict, compare=False, repr=False)


def pretrain_config(config: StudyConfig, ratio: float,
                    seed: int) -> PretrainConfig | ClipConfig:
    """The pre-training settings of grid point ``(ratio, seed)``: what ``nmtune study`` trains
    there, and what ``nmtune pretrain --config STUDY`` trains for the same point (a contrastive
    point swaps ``ratio`` of its captions, drawn with the point's seed)."""
    if config.pretrain is None:
        raise NMTuneError(f"study {config.name!r} has no pretrain section to run")
    if isinstance(config.pretrain, ClipConfig):
        return dataclasses.replace(config.pretrain, seed=seed, caption_swap=ratio,
                                   noise_seed=seed)
    return dataclasses.replace(config.pretrain, seed=seed, noise=config.noise.spec(ratio, seed))


def run_name(config: StudyConfig, ratio: float, seed: int) -> str:
    """The folder under ``pretrain/`` of grid point ``(ratio, seed)``."""
    return f"{config.noise.kind}-{ratio:g}-seed{seed}"
