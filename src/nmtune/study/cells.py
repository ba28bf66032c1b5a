"""A study's cells: the graph of its work, and the runner that runs (or reads back) one cell.

Each tuned/evaluated cell and each spectrum is one small JSON file, written atomically and
named by the hash of everything that determines it; features live in the content-addressed
cache (:mod:`nmtune.features`) and pre-training resumes from its checkpoints, so a study killed
at any moment resumes where it stopped. The executors (:mod:`nmtune.executors`) run the graph
of :func:`study_cells` by calling :meth:`StudyRunner.run_cell`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._hashing import json_digest, sha256_file
from .._io import write_json_atomic
from .._validation import NMTuneError
from ..pretrain import ClipConfig
from ..results import chance_level
from .config import ZEROSHOT, SetSpec, StudyConfig, TaskSpec, pretrain_config, run_name
from .methods import make_tuner

#: Bump when a cell's computation changes in a way its inputs don't show.
CELL_FORMAT = 1


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


@dataclass(frozen=True)
class Cell:
    """One unit of a study's work, the same whichever executor runs it.

    ``stage`` is ``pretrain`` (the backbone of grid point ``(ratio, seed)``), ``extract`` (the
    features of ``spec`` with ``views`` views, view 0 clean with ``clean_view``, into the
    feature cache), ``spectrum`` (of
    ``spec``) or ``tune`` (``method`` fitted on ``task``, one row per ID/OOD test set).
    """

    stage: str
    ratio: float
    seed: int
    spec: SetSpec | None = None
    views: int = 1
    clean_view: bool = False
    task: TaskSpec | None = None
    method: str | None = None

    @property
    def name(self) -> str:
        """``noise RATIO seed SEED: STAGE WHAT``, e.g. ``noise 0.3 seed 0: tune mnist lp``."""
        if self.stage == "tune":
            what = f" {self.task.name} {self.method}"
        elif self.spec is not None:
            what = (f" {self.spec.label}" + (f" x{self.views}" if self.views > 1 else "")
                    + (" (view 0 clean)" if self.clean_view else ""))
        else:
            what = ""
        return f"noise {self.ratio:g} seed {self.seed}: {self.stage}{what}"


def _spectrum_sets(config: StudyConfig) -> list[SetSpec]:
    return list(config.spectrum_of) or list(dict.fromkeys(t.test for t in config.tasks))


def train_views(params: dict) -> tuple[int, bool]:
    """``(views, clean_view)`` of a method entry's training features."""
    return int(params.get("views", 1)), bool(params.get("clean_view", False))


def study_cells(config: StudyConfig) -> dict[Cell, tuple[Cell, ...]]:
    """Every cell of the study mapped to the cells it needs, in an order that runs each cell
    after its dependencies (the in-process order: per grid point, pre-train, extract, spectra,
    then tuning)."""
    graph: dict[Cell, tuple[Cell, ...]] = {}
    for seed in config.seeds:
        for ratio in config.noise.ratios:
            point = Cell("pretrain", ratio, seed)
            graph[point] = ()
            needed = [(spec, 1, False) for spec in _spectrum_sets(config)]
            for task in config.tasks:
                for method in config.methods:
                    needed.append((task.train, *train_views(config.methods[method])))
                    needed.extend((spec, 1, False) for _, _, spec in task.evaluations())
            extracts = {(spec, views, clean): Cell("extract", ratio, seed, spec=spec,
                                                   views=views, clean_view=clean)
                        for spec, views, clean in dict.fromkeys(needed)}
            for cell in extracts.values():
                graph[cell] = (point,)
            for spec in _spectrum_sets(config):
                graph[Cell("spectrum", ratio, seed, spec=spec)] = (
                    point, extracts[spec, 1, False])
            for task in config.tasks:
                for method in config.methods:
                    sets = [(task.train, *train_views(config.methods[method]))] + [
                        (s, 1, False) for _, _, s in task.evaluations()]
                    graph[Cell("tune", ratio, seed, task=task, method=method)] = (
                        point, *dict.fromkeys(extracts[k] for k in sets))
                if config.zeroshot is not None:  # scores the test sets only; fits nothing
                    graph[Cell("tune", ratio, seed, task=task, method=ZEROSHOT)] = (
                        point, *dict.fromkeys(extracts[s, 1, False]
                                              for _, _, s in task.evaluations()))
    return graph


class StudyRunner:
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
            self.features(point, cell.spec, cell.views, cell.clean_view)
            return None
        if cell.stage == "spectrum":
            return self.spectrum_cell(point, cell.spec)
        if cell.method == ZEROSHOT:
            return self.zeroshot_cells(point, cell.task)
        return self.tune_cells(point, cell.task, cell.method, cell.seed)

    # -- stages -----------------------------------------------------------------

    def dataset(self, spec: SetSpec):
        from ..data import load_dataset

        if spec not in self._datasets:
            self._datasets[spec] = load_dataset(spec.dataset, spec.split, spec.limit, spec.seed)
        return self._datasets[spec]

    def backbone(self, weights: str | None):
        """The study's backbone: pre-trained ``weights``, or the real one when None."""
        from ..backbones import create_backbone

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
        from ..pretrain import PretrainResult

        if isinstance(self.cfg.pretrain, ClipConfig):
            from ..pretrain import pretrain_clip as train
        else:
            from ..pretrain import pretrain as train

        run_dir = self.run_dir(ratio, seed)
        finished = PretrainResult(run_dir, {}).metrics_path.is_file()
        if self.cfg.resources.pretrain.gpus > 1 and not finished:
            torchrun_pretrain(self.cfg, self.out, ratio, seed, run_dir)
        result = train(pretrain_config(self.cfg, ratio, seed), run_dir, resume=True,
                       progress=self.progress)
        metrics = result.metrics
        grid["realised_noise_rate"] = metrics.get("realised_noise_rate", 0.0)
        weights = str(result.backbone_path)
        return {"grid": grid, "weights": weights, "metrics": metrics, "run_dir": str(run_dir),
                "identity": self.backbone(weights).identity()}  # hashes the weights

    def run_dir(self, ratio: float, seed: int) -> Path:
        """The pre-training run folder of grid point ``(ratio, seed)``."""
        return self.out / "pretrain" / run_name(self.cfg, ratio, seed)

    def features(self, point: dict, spec: SetSpec, views: int = 1, clean_view: bool = False):
        """Features and labels of ``spec`` under grid point ``point``'s backbone (``views``
        views, view 0 clean with ``clean_view``)."""
        from ..features import extract

        if self._features_of != point["identity"]:
            self._features.clear()  # only one point's features are held at a time
            self._features_of = point["identity"]
        if (spec, views, clean_view) in self._features:
            return self._features[spec, views, clean_view]
        fs = extract(
            self.backbone(point["weights"]),
            self.dataset(spec),
            views=views,
            clean_view=clean_view,
            seed=spec.seed,
            batch_size=self.cfg.features.batch_size,
            device=self.cfg.device,
            cache_dir=self.out / "features",
            progress=self.progress,
        )
        self._features[spec, views, clean_view] = fs.features, fs.labels
        return fs.features, fs.labels

    def spectrum_cell(self, point: dict, spec: SetSpec) -> dict:
        from ..spectrum import summary

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
        views, clean_view = train_views(params)
        grid = point["grid"]

        def compute():
            self.task_classes(task)
            X_train, y_train = self.features(point, task.train, views, clean_view)
            tuner = make_tuner(params, seed, self.cfg.device)
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
            return {"rows": self.evaluate(point, task, common, tuner.score)}

        key = _key(point["identity"], task, method, params, seed, grid)
        return _cached(self.out / "cells" / f"tune-{key}.json", compute, _is_tune_cell)["rows"]

    def zeroshot_cells(self, point: dict, task: TaskSpec) -> list:
        """Zero-shot classification of the task's ID and OOD test sets by the CLIP model of
        grid point ``point``: its text tower embeds the prompt templates of each class, its
        image projection maps the same cached image-tower features the tuned methods see."""
        from ..zeroshot import DEFAULT_TEMPLATES

        templates = self.cfg.zeroshot.templates or DEFAULT_TEMPLATES
        grid, run_dir = point["grid"], Path(point["run_dir"])

        def compute():
            from ..data.pairs import noun_phrase
            from ..pretrain import load_clip_run
            from ..zeroshot import ZeroShotClassifier, embed_image_features

            classes = self.task_classes(task)
            t0 = time.perf_counter()
            model = load_clip_run(run_dir)
            classifier = ZeroShotClassifier(model, [noun_phrase(c) for c in classes],
                                            templates).fit()
            common = {**grid, "train_set": task.train.label, "method": ZEROSHOT,
                      "protocol": "zero-shot", "selected": "", "views": 1, "n_train": 0,
                      "fit_seconds": round(time.perf_counter() - t0, 3)}
            return {"rows": self.evaluate(
                point, task, common,
                lambda X, y: classifier.score(embed_image_features(model, X), y))}

        # The image tower's identity does not cover the text tower: the whole model's does.
        model_digest = sha256_file(run_dir / "model.pt")
        key = _key(point["identity"], model_digest, task, ZEROSHOT, templates, grid)
        return _cached(self.out / "cells" / f"zeroshot-{key}.json", compute,
                       _is_tune_cell)["rows"]

    def task_classes(self, task: TaskSpec) -> tuple[str, ...]:
        """The task's class names, checked to be the same list in every test set."""
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
        return classes

    def evaluate(self, point: dict, task: TaskSpec, common: dict, score) -> list[dict]:
        """One row per ID/OOD test set of ``task``: ``common`` and ``score(X, y)``."""
        rows = []
        for name, kind, spec in task.evaluations():
            X_test, y_test = self.features(point, spec)
            rows.append({**common, "task": name, "kind": kind, "test_set": spec.label,
                         "accuracy": float(score(np.asarray(X_test), y_test)),
                         "chance": chance_level(y_test), "n_test": int(len(y_test))})
        return rows

    # -- the grid ---------------------------------------------------------------

    def preflight(self) -> None:
        """Fail before any work when a dataset, backbone or noise source is missing, naming
        the fix."""
        from ..backbones import get_spec
        from ..data import require_dataset
        from ..noise import cifar_n_labels

        sets = [s for t in self.cfg.tasks for _, _, s in t.evaluations()] + [
            t.train for t in self.cfg.tasks] + list(self.cfg.spectrum_of)
        p = self.cfg.pretrain
        if isinstance(p, ClipConfig):
            if p.pairs is None:
                sets.append(SetSpec(p.dataset, p.split))
            else:
                _require_pairs(p.pairs)
        elif p is not None:
            sets.append(SetSpec(p.dataset, p.split))
            sets.append(SetSpec(p.eval_dataset or p.dataset, p.eval_split))
        for spec in dict.fromkeys(sets):
            require_dataset(spec.dataset, spec.split)
        backbone = get_spec(self.cfg.backbone["name"])
        if not backbone.installed:
            raise NMTuneError(f"backbone {self.cfg.backbone['name']!r} needs: {backbone.install}")
        if self.cfg.noise.cifar_n is not None:
            cifar_n_labels(self.cfg.noise.cifar_n)  # the labels ship in an optional package


def _require_pairs(source: str) -> None:
    """Fail naming the first missing file of a pair table or shard set, before any work."""
    from ..data.pairs import expand_shards

    files = expand_shards(source) if ".tar" in source else [source]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise NMTuneError(f"pretrain.pairs: {missing[0]} does not exist ({len(missing)} of "
                          f"{len(files)} pair files missing); see the config's header for the data")


def torchrun_pretrain(config: StudyConfig, out: Path, ratio: float, seed: int,
                       run_dir: Path) -> None:
    """Pre-train one grid point as one DDP job over ``resources.pretrain.gpus`` local GPUs:
    ``torchrun --standalone`` of ``nmtune pretrain --config STUDY`` (the study's own
    ``config.yaml``), which trains exactly :func:`pretrain_config`'s settings. Untested on GPUs
    (docs/benchmarks.md); a finished run is then read back by :func:`nmtune.pretrain.pretrain`.
    """
    import subprocess
    import sys

    from ..noise import SOURCED_KINDS

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
