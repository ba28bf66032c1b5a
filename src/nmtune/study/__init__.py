"""The experiment grid: a YAML config -> resumable cells -> one tidy results table.

A study crosses pre-training noise (type × ratio) with seeds; for each pre-trained model it
extracts features of every downstream set, measures their spectrum, and fits every tuning
method on every task (ID: train and test from one distribution; OOD: test on a shifted one).

Every stage is cached by its inputs, so a study killed at any moment resumes where it stopped
and ends with the same table:

- pre-training checkpoints every epoch and resumes (``nmtune.pretrain``);
- features live in the content-addressed cache (``nmtune.features``), written in shards;
- each tuned/evaluated cell and each spectrum is one small JSON file, written atomically,
  named by the hash of everything that determines it.

With ``pretrain: null`` (a real pre-trained backbone such as EfficientNet-Lite0 or MiniLM)
there is no noise grid: the study compares the tuning methods over seeds on that backbone.

With ``pretrain: {objective: clip, ...}`` each grid point is a contrastive (CLIP) pre-training
run on image–text pairs (:func:`nmtune.pretrain.pretrain_clip`) with the caption-swap noise of
``noise: {kind: caption_swap, ratios: [...]}``; its image tower is the backbone whose features
are measured and tuned, and a ``zeroshot:`` section adds zero-shot classification by prompt
templates (:mod:`nmtune.zeroshot`) as one more method on the same frozen features.

The package: :mod:`~nmtune.study.config` (the typed config), :mod:`~nmtune.study.methods` (a
method entry and its estimator), :mod:`~nmtune.study.parse` (YAML -> config),
:mod:`~nmtune.study.cells` (the cell graph and the runner of one cell) and
:mod:`~nmtune.study.run` (:func:`run_study`); data flows config -> cells -> run.
"""

from .cells import Cell, StudyRunner, study_cells, torchrun_pretrain
from .config import ZEROSHOT, NoiseGrid, SetSpec, StudyConfig, TaskSpec, pretrain_config, run_name
from .methods import make_tuner
from .parse import PACKAGED_CONFIGS, config_from_dict, load_config, resolve_config_path
from .run import run_study

__all__ = [
    "PACKAGED_CONFIGS",
    "ZEROSHOT",
    "Cell",
    "NoiseGrid",
    "SetSpec",
    "StudyConfig",
    "StudyRunner",
    "TaskSpec",
    "config_from_dict",
    "load_config",
    "make_tuner",
    "pretrain_config",
    "resolve_config_path",
    "run_name",
    "run_study",
    "study_cells",
    "torchrun_pretrain",
]
