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
import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from . import __version__
from ._io import write_bytes_atomic, write_json_atomic
from ._validation import NMTuneError
from .environment import environment

#: Bump when a cell's computation changes in a way its inputs don't show.
CELL_FORMAT = 1

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


# --------------------------------------------------------------------------- config


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
class StudyConfig:
    """A whole study; see ``configs/default.yaml`` for a commented example."""

    name: str
    seeds: tuple[int, ...]
    backbone: dict
    tasks: tuple[TaskSpec, ...]
    methods: dict
    pretrain: dict | None = None
    noise: dict = field(default_factory=lambda: {"kind": "none", "ratios": [0.0]})
    features: dict = field(default_factory=dict)
    spectrum_of: tuple[SetSpec, ...] = ()
    device: str = "auto"
    raw: dict = field(default_factory=dict, compare=False, repr=False)


_TOP_KEYS = {f.name for f in dataclasses.fields(StudyConfig)} - {"raw"}
_METHODS = ("lp", "mlp", "nmtune")


def _set_spec(obj: Any, where: str) -> SetSpec:
    if isinstance(obj, str):
        obj = {"dataset": obj}
    if not isinstance(obj, dict) or "dataset" not in obj:
        raise NMTuneError(f"{where}: expected a mapping with 'dataset' (and split, limit, seed)")
    unknown = set(obj) - {"dataset", "split", "limit", "seed"}
    if unknown:
        raise NMTuneError(f"{where}: unknown key(s) {sorted(unknown)}")
    return SetSpec(**obj)


def config_from_dict(raw: dict, source: str = "config") -> StudyConfig:
    """Validate a parsed YAML mapping and build a :class:`StudyConfig`; errors name the key."""
    if not isinstance(raw, dict):
        raise NMTuneError(f"{source}: top level must be a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise NMTuneError(
            f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    for key in ("name", "seeds", "backbone", "tasks", "methods"):
        if key not in raw:
            raise NMTuneError(f"{source}: missing required key '{key}'")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise NMTuneError(f"{source}: 'seeds' must be a non-empty list of integers")
    backbone = raw["backbone"]
    if isinstance(backbone, str):
        backbone = {"name": backbone}
    if not isinstance(backbone, dict) or "name" not in backbone:
        raise NMTuneError(f"{source}: 'backbone' must be a name or a mapping with 'name'")
    tasks = []
    for i, t in enumerate(raw["tasks"] or []):
        where = f"{source}: tasks[{i}]"
        if not isinstance(t, dict) or not {"name", "train", "test"} <= set(t):
            raise NMTuneError(f"{where}: needs name, train and test (and optionally ood)")
        unknown = set(t) - {"name", "train", "test", "ood"}
        if unknown:
            raise NMTuneError(f"{where}: unknown key(s) {sorted(unknown)}")
        ood = t.get("ood") or {}
        if not isinstance(ood, dict):
            raise NMTuneError(f"{where}.ood: expected a mapping of shift name -> test set")
        tasks.append(TaskSpec(
            str(t["name"]), _set_spec(t["train"], f"{where}.train"),
            _set_spec(t["test"], f"{where}.test"),
            tuple((str(k), _set_spec(v, f"{where}.ood.{k}")) for k, v in ood.items()),
        ))
    if not tasks:
        raise NMTuneError(f"{source}: 'tasks' must list at least one task")
    if len({t.name for t in tasks}) != len(tasks):
        raise NMTuneError(f"{source}: task names must be unique")
    methods = raw["methods"]
    if not isinstance(methods, dict) or not methods:
        raise NMTuneError(f"{source}: 'methods' must map method names to their settings")
    methods = {name: dict(params or {}) for name, params in methods.items()}
    for name, params in methods.items():
        if not isinstance(params, dict):
            raise NMTuneError(f"{source}: settings of method {name!r} must be a mapping")
        params.setdefault("method", name)
        if params["method"] not in _METHODS:
            raise NMTuneError(
                f"{source}: method {name!r} is of unknown type {params['method']!r}; give "
                f"'method:' one of {_METHODS}"
            )
    noise = raw.get("noise") or {"kind": "none", "ratios": [0.0]}
    ratios = noise.get("ratios")
    if not isinstance(ratios, list) or not ratios:
        raise NMTuneError(f"{source}: 'noise.ratios' must be a non-empty list")
    for r in ratios:
        if not isinstance(r, int | float) or not 0 <= r < 1:
            raise NMTuneError(f"{source}: noise ratio {r!r} must be a number in [0, 1)")
    if raw.get("pretrain") is None and (noise.get("kind", "none") != "none" or ratios != [0.0]):
        raise NMTuneError(f"{source}: a noise grid needs a 'pretrain' section")
    spectrum_of = tuple(_set_spec(s, f"{source}: spectrum_of") for s in raw.get("spectrum_of", []))
    return StudyConfig(
        name=str(raw["name"]),
        seeds=tuple(seeds),
        backbone=backbone,
        tasks=tuple(tasks),
        methods=methods,
        pretrain=raw.get("pretrain"),
        noise=noise,
        features=dict(raw.get("features") or {}),
        spectrum_of=spectrum_of,
        device=raw.get("device", "auto"),
        raw=copy.deepcopy(raw),
    )


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


def load_config(path: str | Path | None = None) -> StudyConfig:
    """Read and validate a study config (a file path or a packaged config name)."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise NMTuneError(f"{p}: not valid YAML: {exc}") from None
    return config_from_dict(raw, source=str(p))


# --------------------------------------------------------------------------- cells


def _key(*parts: Any) -> str:
    blob = json.dumps([CELL_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cached(path: Path, compute) -> dict:
    """Return the JSON record at ``path``, computing and writing it atomically if absent."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            path.unlink()  # written atomically, so only tampering gets here: recompute
    record = compute()
    write_json_atomic(path, record)
    return record


def _make_tuner(params: dict, seed: int, device: str):
    """The estimator a method entry describes, wrapped in a validation search if it asks.

    ``params`` holds ``method`` (lp, mlp, nmtune), the estimator's own settings, and
    optionally ``select`` (a grid over settings, chosen on a held-out stratified split of the
    training set with scikit-learn's ``GridSearchCV``; the test set is never seen) with
    ``select_val_size``.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedShuffleSplit

    from .tuners import LinearProbe, MLPProbe, NMTuneClassifier

    params = dict(params)
    cls = {"lp": LinearProbe, "mlp": MLPProbe, "nmtune": NMTuneClassifier}[params.pop("method")]
    grid = params.pop("select", None)
    val_size = params.pop("select_val_size", 0.2)
    params.pop("views", None)
    if "device" in cls._get_param_names():
        params.setdefault("device", device)
    try:
        estimator = cls(random_state=seed, **params)
    except TypeError as exc:
        raise NMTuneError(f"bad settings for method {cls.__name__}: {exc}") from None
    if not grid:
        return estimator
    bad = set(grid) - set(estimator.get_params())
    if bad:
        raise NMTuneError(f"select: {cls.__name__} has no setting(s) {sorted(bad)}")
    split = StratifiedShuffleSplit(n_splits=1, test_size=val_size, random_state=seed)
    return GridSearchCV(estimator, grid, cv=split, refit=True)


class _Runner:
    """Runs one study into ``out_dir``.

    Holds the loaded datasets so each is read once, a real (not pre-trained here) backbone so
    it is loaded once, and the current grid point's features so each cached array is read and
    verified once, however many methods use it.
    """

    def __init__(self, config: StudyConfig, out_dir: Path, progress: bool):
        self.cfg = config
        self.out = out_dir
        self.progress = progress
        self._datasets: dict[SetSpec, Any] = {}
        self._real_backbone = None
        self._features: dict[tuple[SetSpec, int], tuple[Any, Any]] = {}

    # -- stages -----------------------------------------------------------------

    def dataset(self, spec: SetSpec):
        from .data import load_dataset

        if spec not in self._datasets:
            self._datasets[spec] = load_dataset(spec.dataset, spec.split, spec.limit, spec.seed)
        return self._datasets[spec]

    def pretrained(self, ratio: float, seed: int) -> tuple[Any, dict | None]:
        """The backbone for one grid point, pre-training it first when the study does."""
        from .backbones import create_backbone

        kwargs = dict(self.cfg.backbone.get("kwargs") or {})
        if self.cfg.pretrain is None:
            if self._real_backbone is None:
                self._real_backbone = create_backbone(self.cfg.backbone["name"], **kwargs)
            return self._real_backbone, None
        from .pretrain import PretrainConfig, pretrain

        noise_kind = self.cfg.noise.get("kind", "symmetric") if ratio > 0 else "none"
        pcfg = PretrainConfig.from_dict({
            **self.cfg.pretrain,
            "backbone": self.cfg.backbone["name"],
            "backbone_kwargs": kwargs,
            "noise": {**{k: v for k, v in self.cfg.noise.items() if k != "ratios"},
                      "kind": noise_kind, "rate": ratio, "seed": seed},
            "seed": seed,
            "device": self.cfg.device,
        })
        run_name = f"{self.cfg.noise.get('kind', 'none')}-{ratio:g}-seed{seed}"
        result = pretrain(pcfg, self.out / "pretrain" / run_name, resume=True,
                          progress=self.progress)
        backbone = create_backbone(self.cfg.backbone["name"], weights=result.backbone_path,
                                   **kwargs)
        return backbone, result.metrics

    def features(self, backbone, spec: SetSpec, views: int = 1):
        """Features and labels of ``spec`` under the current grid point's backbone."""
        from .features import extract

        if (spec, views) in self._features:
            return self._features[spec, views]
        fs = extract(
            backbone,
            self.dataset(spec),
            views=views,
            seed=spec.seed,
            batch_size=int(self.cfg.features.get("batch_size", 256)),
            device=self.cfg.device,
            cache_dir=self.out / "features",
            progress=self.progress,
        )
        self._features[spec, views] = fs.features, fs.labels
        return fs.features, fs.labels

    def spectrum_cell(self, backbone, identity: str, spec: SetSpec, grid: dict) -> dict:
        from .spectrum import summary

        def compute():
            feats, _ = self.features(backbone, spec)
            s = summary(np.asarray(feats))
            return {**grid, "features_of": spec.label, "sve": s["sve"], "lsvr": s["lsvr"],
                    "effective_rank": s["effective_rank"], "n": s["n"], "d": s["d"],
                    "singular_values": json.dumps([float(v) for v in s["singular_values"]])}

        path = self.out / "cells" / f"spectrum-{_key(identity, spec, grid)}.json"
        return _cached(path, compute)

    def tune_cells(self, backbone, identity: str, task: TaskSpec, method: str, seed: int,
                   grid: dict) -> list:
        """Fit ``method`` on the task's training set once; one row per ID/OOD test set."""
        params = self.cfg.methods[method]
        views = int(params.get("views", 1))

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
            X_train, y_train = self.features(backbone, task.train, views=views)
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
                X_test, y_test = self.features(backbone, spec)
                counts = np.bincount(np.asarray(y_test))
                rows.append({**common, "task": name, "kind": kind, "test_set": spec.label,
                             "accuracy": float(tuner.score(np.asarray(X_test), y_test)),
                             "chance": float(counts.max() / counts.sum()),
                             "n_test": int(len(y_test))})
            return {"rows": rows}

        key = _key(identity, task, method, params, seed, grid)
        return _cached(self.out / "cells" / f"tune-{key}.json", compute)["rows"]

    # -- the grid ---------------------------------------------------------------

    def grid_points(self) -> list[tuple[float, int]]:
        return [(float(r), s) for s in self.cfg.seeds for r in self.cfg.noise["ratios"]]

    def preflight(self) -> None:
        """Fail before any work when a dataset or backbone is missing, naming the fix."""
        from .backbones import get_spec
        from .data import require_dataset

        sets = [s for t in self.cfg.tasks for _, _, s in t.evaluations()] + [
            t.train for t in self.cfg.tasks] + list(self.cfg.spectrum_of)
        if self.cfg.pretrain is not None:
            p = self.cfg.pretrain
            sets.append(SetSpec(p.get("dataset", "fashion-mnist"), p.get("split", "train")))
            sets.append(SetSpec(p.get("eval_dataset") or p.get("dataset", "fashion-mnist"),
                                p.get("eval_split", "test")))
        for spec in dict.fromkeys(sets):
            require_dataset(spec.dataset, spec.split)
        backbone = get_spec(self.cfg.backbone["name"])
        if not backbone.installed:
            raise NMTuneError(f"backbone {self.cfg.backbone['name']!r} needs: {backbone.install}")

    def run(self) -> dict[str, pd.DataFrame]:
        points = self.grid_points()
        spectrum_sets = list(self.cfg.spectrum_of) or list(
            dict.fromkeys(t.test for t in self.cfg.tasks)
        )
        n_cells = len(points) * (len(self.cfg.tasks) * len(self.cfg.methods) + len(spectrum_sets))
        results, spectra, pretrain_rows = [], [], []
        bar = tqdm(total=n_cells, desc=f"study {self.cfg.name}", unit="cell",
                   disable=not self.progress)
        for ratio, seed in points:
            grid = {"noise_type": self.cfg.noise.get("kind", "none"), "noise_ratio": ratio,
                    "seed": seed}
            bar.set_postfix_str(f"noise {ratio:.0%} seed {seed}: pre-training")
            backbone, metrics = self.pretrained(ratio, seed)
            identity = backbone.identity()  # hashes the weights: once per grid point
            self._features.clear()  # only this point's features are ever reused
            if metrics is not None:
                grid["realised_noise_rate"] = metrics.get("realised_noise_rate", 0.0)
                pretrain_rows.append({**grid, **{k: v for k, v in metrics.items()
                                                 if k not in grid}})
            for spec in spectrum_sets:
                bar.set_postfix_str(f"noise {ratio:.0%} seed {seed}: spectrum {spec.label}")
                spectra.append(self.spectrum_cell(backbone, identity, spec, grid))
                bar.update()
            for task in self.cfg.tasks:
                for method in self.cfg.methods:
                    bar.set_postfix_str(f"noise {ratio:.0%} seed {seed}: {task.name} {method}")
                    results.extend(self.tune_cells(backbone, identity, task, method, seed,
                                                   grid))
                    bar.update()
        bar.close()
        return {"results": _tidy(results), "spectrum": _tidy(spectra),
                "pretrain": _tidy(pretrain_rows)}


#: Leading columns of every table, in this order; the rest follow alphabetically. Cells are
#: stored as JSON with sorted keys, so a fixed order keeps fresh and cached runs identical.
_LEADING = ["noise_type", "noise_ratio", "realised_noise_rate", "seed", "task", "kind",
            "train_set", "test_set", "features_of", "method", "protocol", "accuracy", "chance"]


def _tidy(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    lead = [c for c in _LEADING if c in df.columns]
    return df[lead + sorted(set(df.columns) - set(lead))]


def run_study(config: StudyConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run (or resume) ``config`` into ``out_dir``; return the tables as DataFrames.

    Writes ``results.csv``, ``spectrum.csv``, ``pretrain.csv`` (when pre-training) and
    ``study.json`` atomically. Re-running with the same config recomputes nothing that is
    already done.
    """
    out = Path(out_dir)
    runner = _Runner(config, out, progress)
    runner.preflight()  # before anything is written: a missing dataset leaves no trace
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    if config_path.is_file() and yaml.safe_load(config_path.read_text()) != config.raw:
        # Cells are keyed by their inputs, so a changed config is safe to run here; say so.
        print(f"note: {out} holds an earlier config; cells that still apply are reused")
    write_bytes_atomic(config_path, yaml.safe_dump(config.raw, sort_keys=False).encode())
    started = time.time()
    tables = runner.run()
    for name, df in tables.items():
        if not df.empty:
            write_bytes_atomic(out / f"{name}.csv", df.to_csv(index=False).encode())
    write_json_atomic(out / "study.json", {
        "name": config.name, "config": config.raw, "nmtune_version": __version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                   f"python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds_this_run": round(time.time() - started, 1),
        "environment": environment(),
    })
    return tables
