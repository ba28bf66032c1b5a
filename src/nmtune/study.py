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
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import platform
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import __version__
from ._hashing import json_digest
from ._io import write_bytes_atomic, write_json_atomic
from ._validation import NMTuneError, check_int, check_keys, check_seed, check_str
from .environment import environment, pinned_threads
from .noise import SOURCED_KINDS, NoiseSpec
from .pretrain import PretrainConfig
from .results import chance_level, tidy_table
from .tuners import create_tuner, get_tuner, list_tuners

#: Bump when a cell's computation changes in a way its inputs don't show.
CELL_FORMAT = 1

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


# --------------------------------------------------------------------------- config

#: A study's name is its output folder under ``nmtune-results/``: plain, so it stays inside.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_THREADS = 1024  # more than any one machine has cores
#: The kind of a ``noise:`` section that names none. Run folders, the ``noise_type`` column and
#: the labels pre-training corrupts all read it from :class:`NoiseGrid`, so they always agree.
DEFAULT_NOISE_KIND = "symmetric"
#: Settings of a method entry that belong to the study, not to the estimator.
_STUDY_METHOD_KEYS = ("method", "views", "select", "select_val_size")
#: PretrainConfig fields every grid point fills in; a ``pretrain:`` section may not set them.
_GRID_PRETRAIN_KEYS = ("backbone", "backbone_kwargs", "noise", "seed", "device")
#: File-based dataset names (``PREFIX:PATH``) and what they hold, known without reading them.
_FILE_PREFIXES = {"folder": "image", "csv": "text", "jsonl": "text"}


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
    pretrain: PretrainConfig | None = None
    noise: NoiseGrid = NO_NOISE
    features: FeaturesConfig = FeaturesConfig()
    spectrum_of: tuple[SetSpec, ...] = ()
    device: str = "auto"
    threads: int = 1
    resources: ResourcesConfig = ResourcesConfig()
    raw: dict = field(default_factory=dict, compare=False, repr=False)


_TOP_KEYS = {f.name for f in dataclasses.fields(StudyConfig)} - {"raw"}


def pretrain_config(config: StudyConfig, ratio: float, seed: int) -> PretrainConfig:
    """The pre-training settings of grid point ``(ratio, seed)``: what ``nmtune study`` trains
    there, and what ``nmtune pretrain --config STUDY`` trains for the same point."""
    if config.pretrain is None:
        raise NMTuneError(f"study {config.name!r} has no pretrain section to run")
    return dataclasses.replace(config.pretrain, seed=seed, noise=config.noise.spec(ratio, seed))


def run_name(config: StudyConfig, ratio: float, seed: int) -> str:
    """The folder under ``pretrain/`` of grid point ``(ratio, seed)``."""
    return f"{config.noise.kind}-{ratio:g}-seed{seed}"


def _mapping(obj: Any, where: str, keys) -> dict:
    if not isinstance(obj, dict):
        raise NMTuneError(f"{where}: expected a mapping, got {obj!r}")
    check_keys(obj, keys, where)
    return obj


def _modality(dataset: str, where: str) -> str:
    """``image`` or ``text``, without reading the data; raises for an unknown dataset."""
    from .data import dataset_card

    prefix = check_str(dataset, where).partition(":")[0]
    if prefix in _FILE_PREFIXES:
        return _FILE_PREFIXES[prefix]
    return dataset_card(dataset).modality


def _check_modality(dataset: str, backbone: dict, where: str) -> None:
    from .backbones import get_spec

    want = get_spec(backbone["name"]).modality
    have = _modality(dataset, where)
    if have != want:
        raise NMTuneError(f"{where}: {dataset!r} is a {have} dataset, but backbone "
                          f"{backbone['name']!r} takes {want} input")


def _set_spec(obj: Any, where: str, backbone: dict) -> SetSpec:
    if isinstance(obj, str):
        obj = {"dataset": obj}
    obj = _mapping(obj, where, ("dataset", "split", "limit", "seed"))
    if "dataset" not in obj:
        raise NMTuneError(f"{where}: expected a mapping with 'dataset' (and split, limit, seed)")
    spec = SetSpec(**obj)
    check_str(spec.split, f"{where}.split")
    if spec.limit is not None:
        check_int(spec.limit, f"{where}.limit", 1)
    check_int(spec.seed, f"{where}.seed", 0)
    _check_modality(spec.dataset, backbone, where)
    return spec


def _backbone(obj: Any, source: str) -> dict:
    """``{"name": ..., "kwargs": ...}`` of a registered backbone whose factory takes them."""
    from .backbones import get_spec

    where = f"{source}: backbone"
    if isinstance(obj, str):
        obj = {"name": obj}
    obj = _mapping(obj, where, ("name", "kwargs"))
    name = check_str(obj.get("name"), f"{where}.name")
    kwargs = obj.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise NMTuneError(f"{where}.kwargs: expected a mapping, got {kwargs!r}")
    spec = get_spec(name)
    params = inspect.signature(spec.factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        check_keys(kwargs, [p for p in params if p != "model"], f"{where}.kwargs")
    args = (name.partition(":")[2],) if spec.is_family else ()
    try:
        inspect.signature(spec.factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise NMTuneError(f"{where}: bad arguments for {name!r}: {exc}") from None
    return obj


def _tasks(obj: Any, source: str, backbone: dict) -> tuple[TaskSpec, ...]:
    if not isinstance(obj, list) or not obj:
        raise NMTuneError(f"{source}: 'tasks' must list at least one task")
    tasks = []
    for i, t in enumerate(obj):
        where = f"{source}: tasks[{i}]"
        if not isinstance(t, dict) or not {"name", "train", "test"} <= set(t):
            raise NMTuneError(f"{where}: needs name, train and test (and optionally ood)")
        check_keys(t, ("name", "train", "test", "ood"), where)
        ood = t.get("ood") or {}
        if not isinstance(ood, dict):
            raise NMTuneError(f"{where}.ood: expected a mapping of shift name -> test set")
        tasks.append(TaskSpec(
            str(t["name"]), _set_spec(t["train"], f"{where}.train", backbone),
            _set_spec(t["test"], f"{where}.test", backbone),
            tuple((str(k), _set_spec(v, f"{where}.ood.{k}", backbone)) for k, v in ood.items()),
        ))
    if len({t.name for t in tasks}) != len(tasks):
        raise NMTuneError(f"{source}: task names must be unique")
    return tuple(tasks)


def _methods(obj: Any, source: str, device: str) -> dict:
    """Each method's settings, with the estimator it describes built and its parameters
    validated (every candidate of a ``select`` grid too)."""
    if not isinstance(obj, dict) or not obj:
        raise NMTuneError(f"{source}: 'methods' must map method names to their settings")
    methods = {}
    for name, params in obj.items():
        where = f"{source}: methods.{name}"
        if not isinstance(params, dict | None):
            raise NMTuneError(f"{where}: settings must be a mapping, got {params!r}")
        params = dict(params or {})
        params.setdefault("method", name)
        names = tuple(spec.name for spec in list_tuners())
        if params["method"] not in names:
            raise NMTuneError(
                f"{where}: unknown type {params['method']!r}; give 'method:' one of {names}"
            )
        _check_method(params, where, device)
        methods[name] = params
    return methods


def _check_method(params: dict, where: str, device: str) -> None:
    from sklearn.model_selection import ParameterGrid

    if "random_state" in params:
        raise NMTuneError(f"{where}: random_state is set from the study's seeds")
    own = [p for p in get_tuner(params["method"]).param_names if p != "random_state"]
    check_keys(params, [*own, *_STUDY_METHOD_KEYS], where)
    check_int(params.get("views", 1), f"{where}.views", 1)
    val_size = params.get("select_val_size", 0.2)
    if isinstance(val_size, bool) or not isinstance(val_size, int | float) or not (
            0 < val_size < 1):
        raise NMTuneError(f"{where}.select_val_size must be in (0, 1), got {val_size!r}")
    grid = params.get("select") or {}
    if not isinstance(grid, dict) or not all(
            isinstance(v, list) and v for v in grid.values()):
        raise NMTuneError(f"{where}.select: expected a mapping of setting -> non-empty list")
    check_keys(grid, own, f"{where}.select")
    estimator = _make_tuner({**params, "select": None}, seed=0, device=device)
    try:
        for point in ParameterGrid(grid):
            estimator.set_params(**point)._validate_params()
    except NMTuneError as exc:
        raise NMTuneError(f"{where}: {exc}") from None


def _noise(obj: Any, source: str, pretrain: PretrainConfig | None) -> NoiseGrid:
    where = f"{source}: noise"
    if obj is None:
        return NO_NOISE
    obj = _mapping(obj, where, [f.name for f in dataclasses.fields(NoiseGrid)])
    kind = obj.get("kind", DEFAULT_NOISE_KIND)
    ratios = obj.get("ratios", [0.0])
    if not isinstance(ratios, list) or not ratios:
        raise NMTuneError(f"{where}.ratios must be a non-empty list")
    sourced = kind in SOURCED_KINDS
    allowed = ("0 (clean) or 1 (its noise applied): the kind sets its own noise rate"
               if sourced else "a number in [0, 1)")
    for r in ratios:
        if (isinstance(r, bool) or not isinstance(r, int | float)
                or not (r in (0, 1) if sourced else 0 <= r < 1)):
            raise NMTuneError(f"{where}: noise ratio {r!r} of kind {kind!r} must be {allowed}")
    grid = NoiseGrid(**{**obj, "ratios": tuple(float(r) for r in ratios)})
    try:
        # One point of the kind whatever the ratios (a grid may list only 0), so a bad kind or
        # setting fails now: 1 is a sourced kind's noisy point, 0 the only rate of "none".
        probe_rate = 1.0 if sourced else 0.0 if kind == "none" else 0.5
        probe = NoiseSpec(kind, probe_rate, 0, grid.matrix, grid.mapping, grid.cifar_n)
        for r in grid.ratios:
            grid.spec(r, 0)
    except NMTuneError as exc:
        raise NMTuneError(f"{where}: {exc}") from None
    if pretrain is None and (kind != "none" or any(grid.ratios)):
        raise NMTuneError(f"{source}: a noise grid needs a 'pretrain' section")
    if pretrain is not None and pretrain.dataset.partition(":")[0] not in _FILE_PREFIXES:
        from .data import dataset_card

        try:
            probe.check_classes(dataset_card(pretrain.dataset).num_classes)
        except NMTuneError as exc:
            raise NMTuneError(f"{where}: {exc}") from None
    return grid


def _pretrain(obj: Any, source: str, backbone: dict, device: str) -> PretrainConfig | None:
    """The settings every grid point shares; the grid fills in backbone, noise and seed."""
    where = f"{source}: pretrain"
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise NMTuneError(f"{where}: expected a mapping of pre-training settings, got {obj!r}")
    fixed = [k for k in obj if k in _GRID_PRETRAIN_KEYS]
    if fixed:
        raise NMTuneError(f"{where}: {fixed[0]!r} is set by the study (from backbone, seeds, "
                          "noise and device), not in the pretrain section")
    allowed = [f.name for f in dataclasses.fields(PretrainConfig)]
    check_keys(obj, [k for k in allowed if k not in _GRID_PRETRAIN_KEYS], where)
    try:
        config = PretrainConfig.from_dict({
            **obj, "backbone": backbone["name"],
            "backbone_kwargs": dict(backbone.get("kwargs") or {}), "device": device,
        })
    except NMTuneError as exc:
        raise NMTuneError(f"{where}: {exc}") from None
    _check_modality(config.dataset, backbone, f"{where}.dataset")
    if config.eval_dataset is not None:
        _check_modality(config.eval_dataset, backbone, f"{where}.eval_dataset")
    return config


def _resources(obj: Any, source: str) -> ResourcesConfig:
    where = f"{source}: resources"
    stages = {}
    for stage, req in _mapping(obj or {}, where, [f.name for f in dataclasses.fields(
            ResourcesConfig)]).items():
        req = _mapping(req or {}, f"{where}.{stage}", ("cpus", "gpus"))
        for key, low in (("cpus", 0), ("gpus", -1)):
            value = req.get(key, 0 if key == "gpus" else 1)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= low):
                raise NMTuneError(f"{where}.{stage}.{key} must be a number "
                                  f"{'> 0' if key == 'cpus' else '>= 0'}, got {value!r}")
        gpus = req.get("gpus", 0)
        if gpus > 1 and (stage != "pretrain" or gpus != int(gpus)):
            raise NMTuneError(f"{where}.{stage}.gpus is {gpus!r}: only pretrain may use more "
                              "than one GPU (a whole number: one DDP job)")
        stages[stage] = StageResources(**req)
    return ResourcesConfig(**stages)


def config_from_dict(raw: dict, source: str = "config") -> StudyConfig:
    """Validate a parsed YAML mapping whole and build a :class:`StudyConfig`.

    Every setting is checked here, before any folder exists: unknown keys (with the closest
    known one suggested), types and ranges, the pre-training settings of every grid point,
    each method's estimator parameters, and that every dataset suits the backbone. Errors
    name the key.
    """
    if not isinstance(raw, dict):
        raise NMTuneError(f"{source}: top level must be a mapping")
    check_keys(raw, _TOP_KEYS, source)
    for key in ("name", "seeds", "backbone", "tasks", "methods"):
        if key not in raw:
            raise NMTuneError(f"{source}: missing required key '{key}'")
    name = raw["name"]
    if not isinstance(name, str):
        raise NMTuneError(f"{source}: name must be a string, got {name!r} (quote it in YAML)")
    if not _PLAIN_NAME.fullmatch(name):
        raise NMTuneError(
            f"{source}: name {name!r} must be plain (letters, digits, '-', '_', '.'; not "
            "starting with '.'): it names the results folder nmtune-results/<name>"
        )
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise NMTuneError(f"{source}: 'seeds' must be a non-empty list of integers")
    for s in seeds:
        check_seed(s, f"{source}: seeds")
    if len(set(seeds)) < len(seeds):  # a repeat would be one run counted twice
        raise NMTuneError(f"{source}: seeds must be distinct, got {seeds}")
    device = check_str(raw.get("device", "auto"), f"{source}: device")
    if device != "auto":
        from ._torch import parse_device  # torch only when a device is named

        parse_device(device)
    threads = check_int(raw.get("threads", 1), f"{source}: threads", 1)
    if threads > _MAX_THREADS:  # OpenMP would try to allocate a stack for each
        raise NMTuneError(f"{source}: threads must be at most {_MAX_THREADS}, got {threads}")
    backbone = _backbone(raw["backbone"], source)
    pretrain = _pretrain(raw.get("pretrain"), source, backbone, device)
    noise = _noise(raw.get("noise"), source, pretrain)
    features = _mapping(raw.get("features") or {}, f"{source}: features",
                        [f.name for f in dataclasses.fields(FeaturesConfig)])
    check_int(features.get("batch_size", 1), f"{source}: features.batch_size", 1)
    spectrum_of = raw.get("spectrum_of") or []
    if not isinstance(spectrum_of, list):
        raise NMTuneError(f"{source}: 'spectrum_of' must be a list of sets")
    config = StudyConfig(
        name=name,
        seeds=tuple(seeds),
        backbone=backbone,
        tasks=_tasks(raw["tasks"], source, backbone),
        methods=_methods(raw["methods"], source, device),
        pretrain=pretrain,
        noise=noise,
        features=FeaturesConfig(**features),
        spectrum_of=tuple(_set_spec(s, f"{source}: spectrum_of", backbone)
                          for s in spectrum_of),
        device=device,
        threads=threads,
        resources=_resources(raw.get("resources"), source),
        raw=copy.deepcopy(raw),
    )
    if pretrain is not None:
        for ratio in noise.ratios:
            pretrain_config(config, ratio, 0)
    return config


def resolve_config_path(path: str | Path | None) -> Path:
    """A config path, or the name of a packaged config (``default``, ``real-vision``, ...)."""
    if path is None:
        path = "default"
    p = Path(path)
    if p.is_file():
        return p
    packaged = PACKAGED_CONFIGS / f"{p.stem if p.suffix in ('.yaml', '.yml') else p.name}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(q.stem for q in PACKAGED_CONFIGS.glob("*.yaml"))
    raise NMTuneError(f"config not found: {path} (packaged configs: {', '.join(names)})")


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last, so the first setting would vanish unread)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise _DuplicateKey(f"line {node.value[i][0].start_mark.line + 1}: "
                                    f"duplicate key {key!r}")
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None) -> StudyConfig:
    """Read and validate a study config (a file path or a packaged config name)."""
    p = resolve_config_path(path)
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise NMTuneError(f"{p}: not UTF-8 text; a study config is a YAML file") from None
    except _DuplicateKey as exc:
        raise NMTuneError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise NMTuneError(f"{p}: not valid YAML{where}: "
                          f"{getattr(exc, 'problem', None) or ' '.join(str(exc).split())}"
                          ) from None
    return config_from_dict(raw, source=str(p))


# --------------------------------------------------------------------------- cells


def _key(*parts: Any) -> str:
    return json_digest([CELL_FORMAT, *parts])[:20]


def _cached(path: Path, compute: Callable[[], dict], valid: Callable[[dict], bool]) -> dict:
    """Return the JSON record at ``path``, computing and writing it atomically if absent.

    Cells are written atomically, so a record that does not parse or fails ``valid`` (``{}``,
    another file's content) was damaged from outside: it is recomputed with a warning.
    """
    if path.is_file():
        try:
            record = json.loads(path.read_bytes())
            if isinstance(record, dict) and valid(record):
                return record
            problem = "does not hold this cell's fields"
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both
            problem = f"is not valid JSON ({exc})"
        warnings.warn(f"{path} {problem}; recomputing it", UserWarning, stacklevel=2)
    record = compute()
    write_json_atomic(path, record)
    return record


#: What a spectrum cell holds besides its grid point.
_SPECTRUM_FIELDS = ("features_of", "sve", "lsvr", "effective_rank", "n", "d", "singular_values")


def _is_spectrum_cell(record: dict) -> bool:
    return all(k in record for k in _SPECTRUM_FIELDS)


def _is_tune_cell(record: dict) -> bool:
    rows = record.get("rows")
    return isinstance(rows, list) and bool(rows) and all(
        isinstance(row, dict) and "accuracy" in row for row in rows)


def _make_tuner(params: dict, seed: int, device: str):
    """The estimator a method entry describes, wrapped in a validation search if it asks.

    ``params`` holds ``method`` (lp, mlp, nmtune), the estimator's own settings, and
    optionally ``select`` (a grid over settings, chosen on a held-out stratified split of the
    training set with scikit-learn's ``GridSearchCV``; the test set is never seen) with
    ``select_val_size``.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedShuffleSplit

    params = dict(params)
    method = params.pop("method")
    grid = params.pop("select", None)
    val_size = params.pop("select_val_size", 0.2)
    params.pop("views", None)
    if "device" in get_tuner(method).param_names:
        params.setdefault("device", device)
    estimator = create_tuner(method, random_state=seed, **params)
    if not grid:
        return estimator
    check_keys(grid, estimator.get_params(), f"select of {type(estimator).__name__}")
    split = StratifiedShuffleSplit(n_splits=1, test_size=val_size, random_state=seed)
    return GridSearchCV(estimator, grid, cv=split, refit=True)


@dataclass(frozen=True)
class Cell:
    """One unit of a study's work, the same whichever executor runs it.

    ``stage`` is ``pretrain`` (the backbone of grid point ``(ratio, seed)``), ``extract`` (the
    features of ``spec`` with ``views`` views, into the feature cache), ``spectrum`` (of
    ``spec``) or ``tune`` (``method`` fitted on ``task``, one row per ID/OOD test set).
    """

    stage: str
    ratio: float
    seed: int
    spec: SetSpec | None = None
    views: int = 1
    task: TaskSpec | None = None
    method: str | None = None

    @property
    def name(self) -> str:
        """``noise RATIO seed SEED: STAGE WHAT``, e.g. ``noise 0.3 seed 0: tune mnist lp``."""
        if self.stage == "tune":
            what = f" {self.task.name} {self.method}"
        elif self.spec is not None:
            what = f" {self.spec.label}" + (f" x{self.views}" if self.views > 1 else "")
        else:
            what = ""
        return f"noise {self.ratio:g} seed {self.seed}: {self.stage}{what}"


def _spectrum_sets(config: StudyConfig) -> list[SetSpec]:
    return list(config.spectrum_of) or list(dict.fromkeys(t.test for t in config.tasks))


def study_cells(config: StudyConfig) -> dict[Cell, tuple[Cell, ...]]:
    """Every cell of the study mapped to the cells it needs, in an order that runs each cell
    after its dependencies (the in-process order: per grid point, pre-train, extract, spectra,
    then tuning)."""
    graph: dict[Cell, tuple[Cell, ...]] = {}
    for seed in config.seeds:
        for ratio in config.noise.ratios:
            point = Cell("pretrain", ratio, seed)
            graph[point] = ()
            needed = [(spec, 1) for spec in _spectrum_sets(config)]
            for task in config.tasks:
                for method in config.methods:
                    views = int(config.methods[method].get("views", 1))
                    needed.append((task.train, views))
                    needed.extend((spec, 1) for _, _, spec in task.evaluations())
            extracts = {(spec, views): Cell("extract", ratio, seed, spec=spec, views=views)
                        for spec, views in dict.fromkeys(needed)}
            for cell in extracts.values():
                graph[cell] = (point,)
            for spec in _spectrum_sets(config):
                graph[Cell("spectrum", ratio, seed, spec=spec)] = (point, extracts[spec, 1])
            for task in config.tasks:
                for method in config.methods:
                    views = int(config.methods[method].get("views", 1))
                    sets = [(task.train, views)] + [(s, 1) for _, _, s in task.evaluations()]
                    graph[Cell("tune", ratio, seed, task=task, method=method)] = (
                        point, *dict.fromkeys(extracts[k] for k in sets))
    return graph


class _Runner:
    """Runs the cells of one study into ``out_dir``: the one implementation every executor
    calls (:mod:`nmtune.executors`).

    Holds the loaded datasets so each is read once, the current grid point's backbone so it is
    loaded once, and its features so each cached array is read and verified once, however
    many cells of this process use it.
    """

    def __init__(self, config: StudyConfig, out_dir: Path, progress: bool):
        self.cfg = config
        self.out = out_dir
        self.progress = progress
        self._datasets: dict[SetSpec, Any] = {}
        self._backbone: tuple[str | None, Any] = ("", None)
        self._features: dict[tuple[SetSpec, int], tuple[Any, Any]] = {}
        self._features_of = ""

    def run_cell(self, cell: Cell, point: dict | None = None) -> Any:
        """Run (or read back) ``cell``; ``point`` is the output of its grid point's pretrain
        cell. Idempotent: a cell already done is read from its cache."""
        if cell.stage == "pretrain":
            return self.pretrain_cell(cell.ratio, cell.seed)
        if cell.stage == "extract":
            self.features(point, cell.spec, cell.views)
            return None
        if cell.stage == "spectrum":
            return self.spectrum_cell(point, cell.spec)
        return self.tune_cells(point, cell.task, cell.method, cell.seed)

    # -- stages -----------------------------------------------------------------

    def dataset(self, spec: SetSpec):
        from .data import load_dataset

        if spec not in self._datasets:
            self._datasets[spec] = load_dataset(spec.dataset, spec.split, spec.limit, spec.seed)
        return self._datasets[spec]

    def backbone(self, weights: str | None):
        """The study's backbone: pre-trained ``weights``, or the real one when None."""
        from .backbones import create_backbone

        if self._backbone[0] != weights:
            kwargs = dict(self.cfg.backbone.get("kwargs") or {})
            if weights is not None:
                kwargs["weights"] = weights
            self._backbone = (weights, create_backbone(self.cfg.backbone["name"], **kwargs))
        return self._backbone[1]

    def pretrain_cell(self, ratio: float, seed: int) -> dict:
        """Pre-train grid point ``(ratio, seed)`` (resuming; a finished run is reused) and
        return what its other cells need: the grid columns, the weights and their identity."""
        grid = {"noise_type": self.cfg.noise.kind, "noise_ratio": ratio, "seed": seed}
        if self.cfg.pretrain is None:
            return {"grid": grid, "weights": None, "metrics": None,
                    "identity": self.backbone(None).identity()}
        from .pretrain import PretrainResult, pretrain

        run_dir = self.out / "pretrain" / run_name(self.cfg, ratio, seed)
        finished = PretrainResult(run_dir, {}).metrics_path.is_file()
        if self.cfg.resources.pretrain.gpus > 1 and not finished:
            _torchrun_pretrain(self.cfg, self.out, ratio, seed, run_dir)
        result = pretrain(pretrain_config(self.cfg, ratio, seed), run_dir, resume=True,
                          progress=self.progress)
        metrics = result.metrics
        grid["realised_noise_rate"] = metrics.get("realised_noise_rate", 0.0)
        weights = str(result.backbone_path)
        return {"grid": grid, "weights": weights, "metrics": metrics,
                "identity": self.backbone(weights).identity()}  # hashes the weights

    def features(self, point: dict, spec: SetSpec, views: int = 1):
        """Features and labels of ``spec`` under grid point ``point``'s backbone."""
        from .features import extract

        if self._features_of != point["identity"]:
            self._features.clear()  # only one point's features are held at a time
            self._features_of = point["identity"]
        if (spec, views) in self._features:
            return self._features[spec, views]
        fs = extract(
            self.backbone(point["weights"]),
            self.dataset(spec),
            views=views,
            seed=spec.seed,
            batch_size=self.cfg.features.batch_size,
            device=self.cfg.device,
            cache_dir=self.out / "features",
            progress=self.progress,
        )
        self._features[spec, views] = fs.features, fs.labels
        return fs.features, fs.labels

    def spectrum_cell(self, point: dict, spec: SetSpec) -> dict:
        from .spectrum import summary

        grid = point["grid"]

        def compute():
            feats, _ = self.features(point, spec)
            s = summary(np.asarray(feats))
            return {**grid, "features_of": spec.label, "sve": s["sve"], "lsvr": s["lsvr"],
                    "effective_rank": s["effective_rank"], "n": s["n"], "d": s["d"],
                    "singular_values": json.dumps([float(v) for v in s["singular_values"]])}

        path = self.out / "cells" / f"spectrum-{_key(point['identity'], spec, grid)}.json"
        return _cached(path, compute, _is_spectrum_cell)

    def tune_cells(self, point: dict, task: TaskSpec, method: str, seed: int) -> list:
        """Fit ``method`` on the task's training set once; one row per ID/OOD test set."""
        params = self.cfg.methods[method]
        views = int(params.get("views", 1))
        grid = point["grid"]

        def compute():
            classes = self.dataset(task.train).classes
            for _, _, spec in task.evaluations():
                other = self.dataset(spec).classes
                if other != classes:
                    # Labels are indices into each set's classes: different class lists would
                    # silently score a shifted set against the wrong names.
                    raise NMTuneError(
                        f"task {task.name!r}: test set {spec.label} has classes "
                        f"{list(other)[:5]}..., training set {task.train.label} has "
                        f"{list(classes)[:5]}...; they must be the same list"
                    )
            X_train, y_train = self.features(point, task.train, views=views)
            tuner = _make_tuner(params, seed, self.cfg.device)
            t0 = time.perf_counter()
            tuner.fit(np.asarray(X_train), y_train)
            fit_seconds = time.perf_counter() - t0
            selected = getattr(tuner, "best_params_", None)
            tuner = getattr(tuner, "best_estimator_", tuner)
            common = {**grid, "train_set": task.train.label, "method": method,
                      "protocol": "val-selected" if params.get("validation") or selected
                      else "last-epoch",
                      "selected": json.dumps(selected) if selected else "", "views": views,
                      "n_train": int(len(y_train)), "fit_seconds": round(fit_seconds, 3)}
            last = (getattr(tuner, "history_", None) or [{}])[-1]
            for term in ("mse", "cov", "svd"):
                if term in last:
                    common[f"loss_{term}"] = float(last[term])
            rows = []
            for name, kind, spec in task.evaluations():
                X_test, y_test = self.features(point, spec)
                rows.append({**common, "task": name, "kind": kind, "test_set": spec.label,
                             "accuracy": float(tuner.score(np.asarray(X_test), y_test)),
                             "chance": chance_level(y_test),
                             "n_test": int(len(y_test))})
            return {"rows": rows}

        key = _key(point["identity"], task, method, params, seed, grid)
        return _cached(self.out / "cells" / f"tune-{key}.json", compute, _is_tune_cell)["rows"]

    # -- the grid ---------------------------------------------------------------

    def preflight(self) -> None:
        """Fail before any work when a dataset, backbone or noise source is missing, naming
        the fix."""
        from .backbones import get_spec
        from .data import require_dataset
        from .noise import cifar_n_labels

        sets = [s for t in self.cfg.tasks for _, _, s in t.evaluations()] + [
            t.train for t in self.cfg.tasks] + list(self.cfg.spectrum_of)
        if self.cfg.pretrain is not None:
            p = self.cfg.pretrain
            sets.append(SetSpec(p.dataset, p.split))
            sets.append(SetSpec(p.eval_dataset or p.dataset, p.eval_split))
        for spec in dict.fromkeys(sets):
            require_dataset(spec.dataset, spec.split)
        backbone = get_spec(self.cfg.backbone["name"])
        if not backbone.installed:
            raise NMTuneError(f"backbone {self.cfg.backbone['name']!r} needs: {backbone.install}")
        if self.cfg.noise.cifar_n is not None:
            cifar_n_labels(self.cfg.noise.cifar_n)  # the labels ship in an optional package


def _torchrun_pretrain(config: StudyConfig, out: Path, ratio: float, seed: int,
                       run_dir: Path) -> None:
    """Pre-train one grid point as one DDP job over ``resources.pretrain.gpus`` local GPUs:
    ``torchrun --standalone`` of ``nmtune pretrain --config STUDY`` (the study's own
    ``config.yaml``), which trains exactly :func:`pretrain_config`'s settings. Untested on GPUs
    (docs/benchmarks.md); a finished run is then read back by :func:`nmtune.pretrain.pretrain`.
    """
    import subprocess
    import sys

    from .noise import SOURCED_KINDS

    kind = config.noise.kind
    noise = ("none" if ratio == 0 else f"{kind}:{ratio:g}" if kind not in SOURCED_KINDS
             else f"{kind}:1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={int(config.resources.pretrain.gpus)}", "-m", "nmtune.pretrain",
           "--config", str(out / "config.yaml"), "--noise", noise, "--seed", str(seed),
           "--out", str(run_dir), "--quiet"]
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise NMTuneError(f"torchrun pre-training of {run_dir.name} failed "
                          f"(exit {done.returncode}): {tail[0]}")


def _tables(graph: dict, outputs: dict) -> dict[str, pd.DataFrame]:
    """The study's tables from its cells' outputs, in the graph's order whatever the order
    the cells ran in."""
    results, spectra, pretrain_rows = [], [], []
    for cell in graph:
        value = outputs[cell]
        if cell.stage == "pretrain" and value["metrics"] is not None:
            grid = value["grid"]
            pretrain_rows.append({**grid, **{k: v for k, v in value["metrics"].items()
                                             if k not in grid}})
        elif cell.stage == "spectrum":
            spectra.append(value)
        elif cell.stage == "tune":
            results.extend(value)
    return {"results": tidy_table(results), "spectrum": tidy_table(spectra),
            "pretrain": tidy_table(pretrain_rows)}


def run_study(config: StudyConfig, out_dir: str | Path, *, progress: bool = True,
              executor: str = "in-process", address: str | None = None) -> dict:
    """Run (or resume) ``config`` into ``out_dir``; return the tables as DataFrames.

    ``executor`` is ``in-process`` (one cell after another here) or ``ray`` (every cell a Ray
    task on the cluster at ``address``, or a local one; needs ``nmtune[ray]`` and ``out_dir``
    on a path every node shares). Both run the same cells into the same caches, so their
    tables are identical and either resumes the other's work.

    Writes ``results.csv``, ``spectrum.csv``, ``pretrain.csv`` (when pre-training),
    ``timings.csv`` (seconds per cell this run) and ``study.json`` atomically. Re-running with
    the same config recomputes nothing that is already done.
    """
    from .executors import get_executor

    run_cells = get_executor(executor, address)  # a missing extra fails before any work
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NMTuneError(f"{out} is a file, not a folder: give the study a results folder")
    runner = _Runner(config, out, progress)
    runner.preflight()  # before anything is written: a missing dataset leaves no trace
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    if config_path.is_file() and yaml.safe_load(config_path.read_text()) != config.raw:
        # Cells are keyed by their inputs, so a changed config is safe to run here; say so.
        print(f"note: {out} holds an earlier config; cells that still apply are reused")
    write_bytes_atomic(config_path, yaml.safe_dump(config.raw, sort_keys=False).encode())
    started = time.time()
    graph = study_cells(config)
    with pinned_threads(config.threads):  # results must not depend on OMP_NUM_THREADS
        outputs, seconds = run_cells(runner, graph)
        env = environment()  # inside: the thread counts the cells ran with
    tables = _tables(graph, outputs)
    tables["timings"] = pd.DataFrame(
        [{"stage": c.stage, "cell": c.name, "seconds": round(seconds[c], 3)} for c in graph])
    for name, df in tables.items():
        if not df.empty:
            write_bytes_atomic(out / f"{name}.csv", df.to_csv(index=False).encode())
    write_json_atomic(out / "study.json", {
        "name": config.name, "config": config.raw, "nmtune_version": __version__,
        "executor": executor,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                   f"python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds_this_run": round(time.time() - started, 1),
        "threads": config.threads,
        "environment": env,
    })
    return tables
