"""The backbone registry: ``create_backbone(name, **kw)`` builds any registered feature extractor.

Names are either exact (``"resnet8"``, ``"efficientnet-lite0"``, ``"minilm"``) or a family
prefix followed by the model name (``"timm:resnet18"``, ``"open_clip:ViT-B-32:openai"``,
``"hf:bert-base-uncased"``, ``"openai:text-embedding-3-small"``). Each family registers itself
in its own module with :func:`register_backbone`; this module imports neither torch nor any
family, so the registry's cards (:func:`list_backbones`, :func:`get_spec`) cost no model load.

Torch backbones accept ``weights=PATH`` (a state_dict from ``torch.save`` or safetensors);
the file's sha256 enters the backbone's identity, so the feature cache never serves features
of other weights.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._validation import NMTuneError

if TYPE_CHECKING:
    from .base import Backbone

__all__ = [
    "BackboneSpec",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "register_backbone",
    "unregister_backbone",
]


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone without building it.

    Attributes
    ----------
    name : str
        Registry name; a family ends in ``":"`` and takes the model name after it.
    factory : callable
        ``factory(**kw) -> Backbone`` (families: ``factory(model_name, **kw)``).
    modality : {"image", "text"}
    feature_dim : int or None
        Width with default arguments, when known without loading (``None`` otherwise).
    requires : tuple of str
        Importable modules the factory needs.
    install : str or None
        The command that installs them.
    description : str
    """

    name: str
    factory: Callable[..., Backbone]
    modality: str
    feature_dim: int | None = None
    requires: tuple[str, ...] = ()
    install: str | None = None
    description: str = ""

    @property
    def is_family(self) -> bool:
        return self.name.endswith(":")

    @property
    def installed(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.requires)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str,
    *,
    modality: str,
    feature_dim: int | None = None,
    requires: tuple[str, ...] = (),
    install: str | None = None,
    description: str = "",
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator registering a backbone factory under ``name`` (``"family:"`` for a prefix).

    The factory should import torch and its model code inside its body, so that registering
    (and listing) stays free of them.

    Examples
    --------
    >>> @register_backbone("my-cnn", modality="image", feature_dim=128)
    ... def _my_cnn(**kw):
    ...     return TorchBackbone(MyCNN(**kw), name="my-cnn")
    """

    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise NMTuneError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = BackboneSpec(
            name, factory, modality, feature_dim, tuple(requires), install, description
        )
        return factory

    return decorator


def unregister_backbone(name: str) -> BackboneSpec:
    """Remove the backbone ``name`` (exactly as registered) and return its spec.

    For code that registers a backbone for a while, such as a test fixture.
    """
    if name not in _REGISTRY:
        raise NMTuneError(f"backbone {name!r} is not registered")
    return _REGISTRY.pop(name)


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones and families, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_spec(name: str) -> BackboneSpec:
    """The spec for ``name`` (a ``family:model`` name resolves to its family)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    family, sep, model = name.partition(":")
    if sep and model and f"{family}:" in _REGISTRY:
        return _REGISTRY[f"{family}:"]
    known = ", ".join(spec.name + ("NAME" if spec.is_family else "") for spec in list_backbones())
    raise NMTuneError(f"unknown backbone {name!r}; known: {known}")


def create_backbone(name: str, weights: str | None = None, **kwargs) -> Backbone:
    """Build the backbone ``name`` with factory arguments ``kwargs``.

    Parameters
    ----------
    name : str
        A registered name or ``family:model``.
    weights : path or None
        A state_dict file to load into a torch backbone's module (from ``torch.save`` of
        tensors, or ``.safetensors``).
    **kwargs
        Passed to the factory (e.g. ``width=32, in_channels=3`` for ``resnet8``).
    """
    spec = get_spec(name)
    if not spec.installed:
        raise NMTuneError(f"backbone {name!r} needs {', '.join(spec.requires)}: {spec.install}")
    args = (name.partition(":")[2],) if spec.is_family else ()
    try:
        inspect.signature(spec.factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise NMTuneError(f"bad arguments for backbone {name!r}: {exc}") from None
    backbone = spec.factory(*args, **kwargs)
    if weights is not None:
        from .torch_backbone import TorchBackbone

        if not isinstance(backbone, TorchBackbone):
            raise NMTuneError(f"backbone {name!r} is not a torch module; it cannot load weights")
        backbone.load_weights(weights)
    return backbone
