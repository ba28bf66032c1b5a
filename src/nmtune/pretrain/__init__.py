"""Pre-training of a registered backbone on noisy data, resumable, single process or ``torchrun``.

Two objectives share one run-folder layout (``config.json``, ``noise.npz``, ``checkpoint.pt``
per epoch, ``history.csv``/``.png``, ``backbone.pt``, ``metrics.json``):

- supervised: ``backbone + linear head`` with cross-entropy on noisy labels
  (:func:`pretrain`, :class:`PretrainConfig`);
- contrastive: CLIP's image and text towers with the symmetric InfoNCE loss on image–text
  pairs with caption-swap noise (:func:`pretrain_clip`, :class:`ClipConfig`); ``backbone.pt``
  holds the image tower, ``model.pt`` the whole CLIP model.

=============  =====================================================================
module         job
=============  =====================================================================
config         :class:`PretrainConfig`, :class:`ClipConfig`, :class:`PretrainResult`
loop           the supervised loop, top to bottom in :func:`pretrain`
clip           :func:`train_clip` (the contrastive loop),
               :func:`pretrain_clip` (its run folder), :func:`export_pairs`,
               :func:`load_clip_run` (a finished run's model, for zero-shot)
inputs         model input: preprocessed once, or a lazy folder streamed; augmentation
runfiles       claiming the folder, the noise file, checkpoints, final outputs
distributed    process group, deterministic kernels, batch arithmetic under DDP
args           the ``nmtune pretrain`` flags (used by ``cli`` and by ``__main__``)
=============  =====================================================================

The training modules load torch when first used, so ``nmtune --help`` does not.
"""

from __future__ import annotations

import importlib

from .config import ClipConfig, PretrainConfig, PretrainResult

__all__ = ["ClipConfig", "PretrainConfig", "PretrainResult", "export_pairs", "load_clip_run",
           "pretrain", "pretrain_clip", "train_clip"]

#: Names served from the torch-using modules, imported on first access.
_LAZY = {"pretrain": "loop", "export_pairs": "clip", "load_clip_run": "clip",
         "pretrain_clip": "clip", "train_clip": "clip"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
