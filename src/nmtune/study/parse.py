"""Reading a study config: YAML (a path or a packaged name) -> a checked :class:`StudyConfig`.

Every section is validated whole before any folder exists, and each error names its key.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from pathlib import Path
from typing import Any

import yaml

from .._validation import NMTuneError, check_int, check_keys, check_seed, check_str
from ..noise import SOURCED_KINDS, NoiseSpec
from ..pretrain import ClipConfig, PretrainConfig
from .config import (
    CAPTION_SWAP,
    DEFAULT_NOISE_KIND,
    NO_NOISE,
    ZEROSHOT,
    FeaturesConfig,
    NoiseGrid,
    ResourcesConfig,
    SetSpec,
    StageResources,
    StudyConfig,
    TaskSpec,
    ZeroShotConfig,
    pretrain_config,
)
from .methods import parse_methods

PACKAGED_CONFIGS = Path(__file__).parents[1] / "configs"

#: A study's name is its output folder under ``nmtune-results/``: plain, so it stays inside.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_THREADS = 1024  # more than any one machine has cores
#: PretrainConfig fields every grid point fills in; a ``pretrain:`` section may not set them.
_GRID_PRETRAIN_KEYS = ("backbone", "backbone_kwargs", "noise", "seed", "device")
#: The same for a contrastive ``pretrain:`` section (``objective: clip``).
_GRID_CLIP_KEYS = ("backbone", "backbone_kwargs", "caption_swap", "noise_seed", "seed", "device")
#: File-based dataset names (``PREFIX:PATH``) and what they hold, known without reading them.
_FILE_PREFIXES = {"folder": "image", "csv": "text", "jsonl": "text"}


_TOP_KEYS = {f.name for f in dataclasses.fields(StudyConfig)} - {"raw"}


def _mapping(obj: Any, where: str, keys) -> dict:
    if not isinstance(obj, dict):
        raise NMTuneError(f"{where}: expected a mapping, got {obj!r}")
    check_keys(obj, keys, where)
    return obj


def _modality(dataset: str, where: str) -> str:
    """``image`` or ``text``, without reading the data; raises for an unknown dataset."""
    from ..data import dataset_card

    prefix = check_str(dataset, where).partition(":")[0]
    if prefix in _FILE_PREFIXES:
        return _FILE_PREFIXES[prefix]
    return dataset_card(dataset).modality


def _check_modality(dataset: str, backbone: dict, where: str) -> None:
    from ..backbones import get_spec

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
    from ..backbones import get_spec

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


def _noise(obj: Any, source: str, pretrain: PretrainConfig | None) -> NoiseGrid:
    where = f"{source}: noise"
    if obj is None:
        return NO_NOISE
    obj = _mapping(obj, where, [f.name for f in dataclasses.fields(NoiseGrid)])
    kind = obj.get("kind", DEFAULT_NOISE_KIND)
    ratios = obj.get("ratios", [0.0])
    if not isinstance(ratios, list) or not ratios:
        raise NMTuneError(f"{where}.ratios must be a non-empty list")
    if isinstance(pretrain, ClipConfig) or kind == CAPTION_SWAP:
        return _caption_noise(obj, where, pretrain, ratios)
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
        from ..data import dataset_card

        try:
            probe.check_classes(dataset_card(pretrain.dataset).num_classes)
        except NMTuneError as exc:
            raise NMTuneError(f"{where}: {exc}") from None
    return grid


def _caption_noise(obj: dict, where: str, pretrain, ratios: list) -> NoiseGrid:
    """The caption-swap grid of a contrastive study: kind ``caption_swap`` (or ``none``, for
    clean pairs only), ratios in [0, 1)."""
    kind = obj.get("kind", DEFAULT_NOISE_KIND)
    if not isinstance(pretrain, ClipConfig):
        raise NMTuneError(f"{where}: noise kind {CAPTION_SWAP!r} swaps captions: it needs a "
                          "contrastive pretrain section (objective: clip)")
    if kind not in (CAPTION_SWAP, "none"):
        raise NMTuneError(f"{where}: contrastive pre-training takes noise kind {CAPTION_SWAP!r}"
                          f" (captions swapped between pairs), not {kind!r}")
    extra = [k for k in ("matrix", "mapping", "cifar_n") if obj.get(k) is not None]
    if extra:
        raise NMTuneError(f"{where}: {extra[0]!r} is a label-noise setting; {CAPTION_SWAP} "
                          "takes only ratios")
    for r in ratios:
        if (isinstance(r, bool) or not isinstance(r, int | float)
                or not (r == 0 if kind == "none" else 0 <= r < 1)):
            raise NMTuneError(f"{where}: noise ratio {r!r} of kind {kind!r} must be "
                              + ("0" if kind == "none" else "a number in [0, 1)"))
    return NoiseGrid(kind=kind, ratios=tuple(float(r) for r in ratios))


def _pretrain(obj: Any, source: str, backbone: dict,
              device: str) -> PretrainConfig | ClipConfig | None:
    """The settings every grid point shares; the grid fills in backbone, noise and seed.

    ``objective: clip`` makes it a :class:`~nmtune.pretrain.ClipConfig` (contrastive
    pre-training on image–text pairs); absent or ``supervised``, a
    :class:`~nmtune.pretrain.PretrainConfig`.
    """
    where = f"{source}: pretrain"
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise NMTuneError(f"{where}: expected a mapping of pre-training settings, got {obj!r}")
    objective = obj.get("objective", "supervised")
    if objective not in ("supervised", "clip"):
        raise NMTuneError(f"{where}.objective must be 'supervised' or 'clip', got {objective!r}")
    settings, grid_keys = ((ClipConfig, _GRID_CLIP_KEYS) if objective == "clip"
                           else (PretrainConfig, _GRID_PRETRAIN_KEYS))
    obj = {k: v for k, v in obj.items() if k != "objective" or objective == "clip"}
    fixed = [k for k in obj if k in grid_keys]
    if fixed:
        raise NMTuneError(f"{where}: {fixed[0]!r} is set by the study (from backbone, seeds, "
                          "noise and device), not in the pretrain section")
    allowed = [f.name for f in dataclasses.fields(settings)]
    check_keys(obj, [k for k in allowed if k not in grid_keys], where)
    try:
        config = settings.from_dict({
            **obj, "backbone": backbone["name"],
            "backbone_kwargs": dict(backbone.get("kwargs") or {}), "device": device,
        })
    except NMTuneError as exc:
        raise NMTuneError(f"{where}: {exc}") from None
    if isinstance(config, ClipConfig):
        if config.pairs is None:  # else the pairs are files, read (and checked) at preflight
            _check_modality(config.dataset, backbone, f"{where}.dataset")
        return config
    _check_modality(config.dataset, backbone, f"{where}.dataset")
    if config.eval_dataset is not None:
        _check_modality(config.eval_dataset, backbone, f"{where}.eval_dataset")
    return config


def _zeroshot(obj: Any, source: str, pretrain, methods: dict) -> ZeroShotConfig | None:
    """Zero-shot settings: only for a contrastive study, whose text tower names the classes."""
    where = f"{source}: zeroshot"
    if obj is None:
        return None
    obj = _mapping(obj, where, [f.name for f in dataclasses.fields(ZeroShotConfig)])
    if not isinstance(pretrain, ClipConfig):
        raise NMTuneError(f"{where}: zero-shot needs a text tower, i.e. a contrastive pretrain "
                          "section (objective: clip)")
    if ZEROSHOT in methods:
        raise NMTuneError(f"{source}: methods.{ZEROSHOT}: the name is taken by the zeroshot "
                          "section's rows; call the method something else")
    templates = obj.get("templates")
    if templates is None:
        return ZeroShotConfig()
    if not isinstance(templates, list) or not templates:
        raise NMTuneError(f"{where}.templates must be a non-empty list of prompts")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise NMTuneError(f"{where}.templates: each prompt needs exactly one '{{}}' for the "
                              f"class name, got {t!r}")
    return ZeroShotConfig(tuple(templates))


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
        from .._torch import parse_device  # torch only when a device is named

        parse_device(device)
    threads = check_int(raw.get("threads", 1), f"{source}: threads", 1)
    if threads > _MAX_THREADS:  # OpenMP would try to allocate a stack for each
        raise NMTuneError(f"{source}: threads must be at most {_MAX_THREADS}, got {threads}")
    backbone = _backbone(raw["backbone"], source)
    pretrain = _pretrain(raw.get("pretrain"), source, backbone, device)
    noise = _noise(raw.get("noise"), source, pretrain)
    methods = parse_methods(raw["methods"], source, device)
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
        methods=methods,
        pretrain=pretrain,
        noise=noise,
        zeroshot=_zeroshot(raw.get("zeroshot"), source, pretrain, methods),
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
