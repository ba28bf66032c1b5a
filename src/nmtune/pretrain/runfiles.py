"""The files of a run folder: claiming it for one config, the noise file, checkpoints with
everything a bit-identical resume needs, and the final outputs.

A file that cannot be used (truncated, random bytes, another run's) is one
:class:`~nmtune._validation.NMTuneError` line that names it and the fix, raised before
anything is half-restored.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path, write_json_atomic
from .._validation import NMTuneError
from .config import PLACEMENT_KEYS, PretrainResult


def run_folder(out_dir) -> PretrainResult:
    """The run files of folder ``out_dir`` (not yet created); a file there is an error."""
    result = PretrainResult(Path(out_dir), {})
    if result.out_dir.exists() and not result.out_dir.is_dir():
        raise NMTuneError(f"{result.out_dir} is a file, not a folder: give the run a folder")
    return result


def start_run(result: PretrainResult, config, resume: bool, ctx) -> dict[str, Any] | None:
    """Claim the folder for ``config`` on rank 0 (:func:`claim_out_dir`), then on every rank:
    the finished run's metrics when ``resume`` finds it complete, else ``None``."""
    if ctx.is_main:
        claim_out_dir(result, config, resume)
    ctx.barrier()
    if resume and result.metrics_path.is_file() and result.backbone_path.is_file():
        return read_run_json(result.metrics_path)
    return None


def claim_out_dir(result: PretrainResult, config, resume: bool) -> None:
    """Write ``config.json``, or check it against ``config``; ``resume=False`` clears old state.

    ``config`` is a :class:`PretrainConfig` or :class:`~nmtune.pretrain.clip.ClipConfig`: any
    frozen dataclass with ``to_dict`` whose fields all have defaults.
    """
    path = result.config_path
    want = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored
    if path.is_file():
        # A setting added after the run started is absent from its file; it ran the default.
        defaults = json.loads(json.dumps(type(config)().to_dict()))
        have = {**defaults, **read_run_json(path)}
        diff = sorted(
            k for k in set(have) | set(want)
            if k not in PLACEMENT_KEYS and have.get(k) != want.get(k)
        )
        # A run that failed before its noise was drawn (a bad data file) trained nothing:
        # its config.json must not lock the folder against the corrected settings.
        started = any(p.is_file() for p in (result.noise_path, result.checkpoint_path,
                                            result.metrics_path, result.backbone_path))
        if diff and started:
            shown = "; ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff)
            raise NMTuneError(
                f"{result.out_dir} holds a pre-training run with another config ({shown}); "
                "use another output directory"
            )
    if not resume:
        for stale in (result.checkpoint_path, result.backbone_path, result.metrics_path):
            stale.unlink(missing_ok=True)
    write_json_atomic(path, want)


def broken(path: Path, exc: BaseException | str) -> NMTuneError:
    """The error for a run file that cannot be used, on one line whatever ``exc`` says."""
    reason = " ".join(str(exc).split())[:200]
    return NMTuneError(f"{path} is not a usable file of this pre-training run ({reason}); "
                       "delete it to redo that step, or use another output directory")


def read_run_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are both
        raise broken(path, exc) from None
    if not isinstance(record, dict):
        raise broken(path, f"a JSON {type(record).__name__}, not an object")
    return record


def write_noise(path: Path, clean: np.ndarray, corrupt: Callable, resume: bool) -> None:
    """Save ``clean``, ``noisy, changed = corrupt(clean)``, unless a resumed run already did.

    ``clean`` is the training labels (int64) or captions (str); either way the noise is drawn
    exactly once per run and every rank reads the same file.
    """
    if resume and path.is_file():
        return
    noisy, changed = corrupt(clean)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, clean=clean, noisy=np.asarray(noisy, dtype=clean.dtype),
                 changed=changed.astype(bool))


def read_noise(path: Path, clean: np.ndarray) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = {k: npz[k] for k in ("clean", "noisy", "changed")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise broken(path, exc) from None
    if any(v.shape != clean.shape for v in labels.values()):
        raise broken(path, f"its label arrays are not {clean.shape[0]} long")
    if not np.array_equal(labels["clean"], clean):
        raise NMTuneError(
            f"{path} was made from other training data than the dataset now loads; the data "
            "changed since the run started: use another output directory"
        )
    return labels


def _rng_state(order_gen: torch.Generator) -> dict[str, Any]:
    # Only torch RNGs drive training (init, data order); python/numpy random are not used.
    state = {"torch": torch.get_rng_state(), "order": order_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    path: Path, model, optimizer, order_gen, history: list, config: dict, scheduler=None
) -> None:
    """Everything the remaining epochs depend on, written atomically to ``path``."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(order_gen),
        "history": history,
        "config": config,
    }
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: Path, model, optimizer, order_gen, device, scheduler=None, expect: dict | None = None
) -> tuple[int, list]:
    """Restore a checkpoint in place; returns ``(epochs done, history)``.

    Anything that is not this run's checkpoint (random bytes, another model's) is an
    :class:`NMTuneError`, raised before training resumes from a half-restored state; so is
    one whose stored ``config`` differs from ``expect`` (when given) in any key.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if expect is not None:
            changed = sorted(k for k in expect if state["config"].get(k) != expect[k])
            if changed:
                raise NMTuneError(f"{path} was written with other settings "
                                  f"({', '.join(changed)}); use another out_dir or resume=False")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        order_gen.set_state(rng["order"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        history = list(state["history"])
    except (RuntimeError, KeyError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, pickle.UnpicklingError) as exc:
        raise broken(path, exc) from None
    return len(history), history


def write_outputs(result: PretrainResult, backbone, history: list, metrics: dict) -> None:
    """``history.csv``/``.png``, ``backbone.pt`` (``backbone``'s state_dict, on the CPU), then
    ``metrics.json``, which marks the run complete; the checkpoint goes."""
    import pandas as pd

    with atomic_path(result.history_path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    _plot_history(history, result.plot_path)
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    with atomic_path(result.backbone_path) as tmp:
        torch.save(state, tmp)
    # metrics.json last: its presence (with backbone.pt) marks the run complete.
    write_json_atomic(result.metrics_path, metrics)
    result.checkpoint_path.unlink(missing_ok=True)


_ACCURACY_CURVES = (("train_acc_noisy", "train vs noisy labels"),
                    ("train_acc_clean", "train vs clean labels"),
                    ("eval_acc", "eval (clean)"))


def _plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    # A contrastive run has a loss and no accuracies: then the second panel stays empty.
    curves = [(k, label) for k, label in _ACCURACY_CURVES if k in history[0]]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss (noisy data)")
    for key, label in curves:
        ax_acc.plot(epochs, [r[key] for r in history], marker="o", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    if curves:
        ax_acc.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
