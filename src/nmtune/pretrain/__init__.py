"""Pre-training of a registered backbone on noisy labels, resumable, single process or ``torchrun``
(:func:`pretrain`, :class:`PretrainConfig`; the run folder is described in :mod:`.loop`).

=============  =====================================================================
module         job
=============  =====================================================================
config         :class:`PretrainConfig` and :class:`PretrainResult` (the run's files)
loop           the supervised loop, top to bottom in :func:`pretrain`
inputs         model input: preprocessed once, or a lazy folder streamed; augmentation
runfiles       claiming the folder, the noise file, checkpoints, final outputs
distributed    process group, deterministic kernels, batch arithmetic under DDP
args           the ``nmtune pretrain`` flags (used by ``cli`` and by ``__main__``)
=============  =====================================================================

The training modules load torch when first used, so ``nmtune --help`` does not.
"""

from __future__ import annotations

import importlib

from .config import PretrainConfig, PretrainResult

__all__ = ["PretrainConfig", "PretrainResult", "pretrain"]

#: Names served from the torch-using modules, imported on first access.
_LAZY = {"pretrain": "loop"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
