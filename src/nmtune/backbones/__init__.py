"""Backbones by name: ``create_backbone(name, **kw)`` builds any registered feature extractor.

This package face only re-exports. The registry lives in :mod:`.registry`; each family
registers itself beside its factories: the built-in CIFAR and ImageNet networks in
:mod:`.builtin`, EfficientNet-Lite0 in :mod:`.efficientnet`, sentence-transformers and MiniLM
in :mod:`.text`, timm / open_clip / transformers in :mod:`.hub`, OpenAI-compatible APIs in
:mod:`.blackbox`. None of these imports torch when imported, and the torch-backed names
(:class:`TorchBackbone`, :class:`ImagePreprocess`) load on first use, so listing backbones
(``nmtune backbones``) never loads torch.
"""

from __future__ import annotations

# Importing a family module registers its backbones.
from . import builtin, efficientnet, hub, text  # noqa: F401
from .base import Backbone
from .blackbox import CallableBackbone, OpenAIEmbeddings, RetryableError
from .builtin import IMAGENET_MEAN, IMAGENET_STD
from .registry import (
    BackboneSpec,
    create_backbone,
    get_spec,
    list_backbones,
    register_backbone,
    unregister_backbone,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneSpec",
    "CallableBackbone",
    "ImagePreprocess",
    "OpenAIEmbeddings",
    "RetryableError",
    "TorchBackbone",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "register_backbone",
    "unregister_backbone",
]

#: Names re-exported from :mod:`.torch_backbone` when first asked for (PEP 562).
_TORCH_NAMES = frozenset({"ImagePreprocess", "TorchBackbone"})


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from . import torch_backbone

        return getattr(torch_backbone, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
